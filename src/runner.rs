//! One worker: check a plan, register it, train every chain stage in order, persist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use crate::config::Value;
use crate::data::{DataError, Dataset, DatasetSpec, RawData};
use crate::store::{
    ChainStageRow, ConfigKeys, ConfigRow, ConfigTable, Fabrikant, LocalArtifacts, Store,
    StoreError, TrainedRow,
};
use crate::train::trained::TrainedModel;
use crate::train::trainer::{train_stage, StageInput};
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
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Done => "done",
            Status::Trained => "trained",
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

    /// Each stage with its key and its parent's key, in chain order.
    fn keyed(&self) -> Vec<(&Chain, usize, &Stage, String, Option<String>)> {
        let mut out = Vec::new();
        for chain in &self.chains {
            let mut parent: Option<String> = None;
            for (i, stage) in chain.stages.iter().enumerate() {
                let key = stage_key(stage, parent.as_deref());
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

/// The key of a stage: its configs' keys, its seed and its parent stage's key.
pub fn stage_key(stage: &Stage, parent: Option<&str>) -> String {
    let pair = |c: &FnConfig| {
        let (f, h) = c.key();
        Value::List(vec![Value::Str(f), Value::Str(h)])
    };
    Value::dict([
        ("dataset", pair(&stage.dataset)),
        ("model", pair(&stage.model)),
        ("trainer", pair(&stage.trainer)),
        ("seed", Value::Int(stage.seed)),
        (
            "parent",
            parent.map_or(Value::None, |p| Value::Str(p.to_string())),
        ),
    ])
    .hash()
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
    let data = dataset
        .as_ref()
        .ok()
        .map(|spec| load_data(spec, options, cache));
    match (dataset, model, trainer, data) {
        (Ok(dataset), Ok(model), Ok(trainer), Some(Ok(data))) => {
            if model.num_classes != dataset.family.num_classes() {
                return Err(vec![RunError::Training(TrainingError::Model(format!(
                    "`num_classes={}`, but `{}` has {} classes",
                    model.num_classes,
                    dataset.family.name(),
                    dataset.family.num_classes()
                )))]);
            }
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

fn load_data(
    spec: &DatasetSpec,
    options: &RunOptions,
    cache: &mut DataCache,
) -> Result<RawData, RunError> {
    let files = spec.locate(&options.work_dir, options.data_dir.as_deref())?;
    let data = match cache.get(&files.train_images) {
        Some(data) => data.clone(),
        None => {
            let data = RawData::load(&files, spec.family)?;
            cache.insert(files.train_images.clone(), data.clone());
            data
        }
    };
    spec.check_split(data.train.images.count)?;
    Ok(data)
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
    let mut cache = DataCache::new();
    plan.keyed()
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
            Ok(report(chain, i, stage, key, done, Status::Done, problem))
        })
        .collect()
}

fn report(
    chain: &Chain,
    i: usize,
    stage: &Stage,
    key: String,
    done: Option<TrainedRow>,
    status_if_done: Status,
    problem: Option<String>,
) -> StageReport {
    let (status, score, output) = match done {
        Some(row) => (
            status_if_done,
            Some(row.score),
            serde_json::from_str(&row.output).ok(),
        ),
        None => (Status::New, None, None),
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

/// Run a plan: check every stage, register the plan, train what is not trained yet.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<Vec<StageReport>, RunError> {
    // 1. Check every stage before anything is written.
    let keyed = plan.keyed();
    let mut checked = Vec::with_capacity(keyed.len());
    let mut cache = DataCache::new();
    for (chain, i, stage, _, _) in &keyed {
        let parts = check_stage(stage, options, &mut cache).map_err(all_problems);
        checked.push(parts.map_err(in_stage(chain, *i, stage))?);
    }
    drop(cache);

    // 2. Register fabrikant, seeds, configs and chains in one transaction.
    let store = Store::open(&options.work_dir, &options.schema)?;
    let fabrikant = Fabrikant::from_env();
    register(&store, &fabrikant, &keyed)?;
    let artifacts = LocalArtifacts::new(options.work_dir.join("artifacts").join(&options.schema));

    // 3. Train each stage whose key has no trained model yet, in chain order.
    let mut reports = Vec::with_capacity(keyed.len());
    for ((chain, i, stage, key, parent), parts) in keyed.into_iter().zip(&checked) {
        if let Some(row) = store.trained(&key)? {
            reports.push(report(chain, i, stage, key, Some(row), Status::Done, None));
            continue;
        }
        let row = train_one(
            &store, &artifacts, options, chain, i, stage, &key, parent, parts,
        )
        .map_err(in_stage(chain, i, stage))?;
        if !store.insert_trained(&row, &fabrikant, &options.provenance)? {
            log::warn!(
                "`{}` stage {i}: another run stored this stage first; keeping its result",
                chain.name
            );
        }
        let row = store.trained(&key)?.unwrap_or(row);
        reports.push(report(
            chain,
            i,
            stage,
            key,
            Some(row),
            Status::Trained,
            None,
        ));
    }
    let trained = reports
        .iter()
        .filter(|r| r.status == Status::Trained)
        .count();
    if trained == 0 {
        log::info!(
            "all {} stages are already trained; nothing to do",
            reports.len()
        );
    }
    Ok(reports)
}

fn register(
    store: &Store,
    fabrikant: &Fabrikant,
    keyed: &[(&Chain, usize, &Stage, String, Option<String>)],
) -> Result<(), RunError> {
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

#[allow(clippy::too_many_arguments)]
fn train_one(
    store: &Store,
    artifacts: &LocalArtifacts,
    options: &RunOptions,
    chain: &Chain,
    i: usize,
    stage: &Stage,
    key: &str,
    parent: Option<String>,
    parts: &Checked,
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
    let dataset = Dataset::new(&parts.dataset, &parts.data, stage.seed as u64);
    log::info!(
        "training `{}` stage {}/{} `{}` (seed {})",
        chain.name,
        i + 1,
        chain.stages.len(),
        stage.comment,
        stage.seed
    );
    let input = StageInput {
        dataset: &dataset,
        model: &parts.model,
        trainer: &parts.trainer,
        seed: stage.seed as u64,
        init_weights: init.as_deref(),
        label: format!("[{} {}/{}]", chain.name, i + 1, chain.stages.len()),
        quiet: options.quiet,
        interrupted: options.interrupted,
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
    let artifacts = LocalArtifacts::new(work_dir.join("artifacts").join(schema));
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

fn save_weights(
    artifacts: &LocalArtifacts,
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
        let a = stage_key(&stage(1), None);
        assert_eq!(a, stage_key(&stage(1), None));
        assert_ne!(a, stage_key(&stage(2), None));
        assert_ne!(a, stage_key(&stage(1), Some("p")));
        assert_eq!(a.len(), 32);
    }
}
