//! Checkpoints: where a stage stands after an epoch, enough to continue it exactly.
//!
//! One safetensors file holds the model's weights (`model/<name>`), the best epoch's
//! weights so far (`best/<name>`), the optimiser's state (`optim/<param>/<slot>`) and a
//! JSON header as a byte tensor (`meta`): the epoch, the best accuracy and its epoch, the
//! optimiser's step count, the schedule's state and the training curve so far. Shuffling
//! and noise are seeded per epoch, so on the CPU a resumed stage ends with the same weights
//! as one that never stopped.

use std::path::Path;

use serde_json::{json, Value as Json};
use tch::{Kind, Tensor};

use super::TrainingError;

const VERSION: i64 = 1;

/// The schedule's state between epochs.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleState {
    pub lr: f64,
    /// ReduceLROnPlateau: the best dev loss seen and the epochs since it.
    pub plateau: Option<(f64, usize)>,
}

/// Named tensors, as a `VarStore` lists them.
pub type Named = Vec<(String, Tensor)>;

/// A stage after `epoch` epochs.
pub struct Checkpoint {
    pub epoch: usize,
    pub model: Named,
    /// Dev accuracy, epoch and weights of the best epoch so far.
    pub best: Option<(f64, usize, Named)>,
    pub optimizer: Named,
    pub steps: i64,
    pub schedule: ScheduleState,
    pub train_stats: Vec<Json>,
}

impl Checkpoint {
    /// Write the checkpoint to `path`.
    pub fn save(&self, path: &Path) -> Result<(), TrainingError> {
        let meta = json!({
            "version": VERSION,
            "epoch": self.epoch,
            "best": self.best.as_ref().map(|(acc, epoch, _)| json!([acc, epoch])),
            "steps": self.steps,
            "lr": self.schedule.lr,
            "plateau": self.schedule.plateau,
            "train_stats": self.train_stats,
        })
        .to_string();
        // Tensors on a GPU are written from host copies, in PyTorch's default layout.
        let mut host = vec![("meta".to_string(), Tensor::from_slice(meta.as_bytes()))];
        let mut add = |prefix: &str, list: &[(String, Tensor)]| {
            for (name, t) in list {
                let t = t.to_device(tch::Device::Cpu).contiguous();
                host.push((format!("{prefix}/{name}"), t));
            }
        };
        add("model", &self.model);
        if let Some((_, _, weights)) = &self.best {
            add("best", weights);
        }
        add("optim", &self.optimizer);
        Tensor::write_safetensors(&host, path)?;
        Ok(())
    }

    /// Read a checkpoint written by [`Checkpoint::save`]; anything missing or malformed is
    /// an error naming the file.
    pub fn load(path: &Path) -> Result<Checkpoint, TrainingError> {
        let bad = |reason: String| TrainingError::Weights {
            path: path.display().to_string(),
            reason: format!("not a readable checkpoint: {reason}"),
        };
        let tensors = Tensor::read_safetensors(path).map_err(|e| bad(e.to_string()))?;
        let mut meta = None;
        let (mut model, mut best, mut optimizer) = (Vec::new(), Vec::new(), Vec::new());
        for (name, tensor) in tensors {
            match name.split_once('/') {
                Some(("model", n)) => model.push((n.to_string(), tensor)),
                Some(("best", n)) => best.push((n.to_string(), tensor)),
                Some(("optim", n)) => optimizer.push((n.to_string(), tensor)),
                _ if name == "meta" && tensor.kind() == Kind::Uint8 => meta = Some(tensor),
                _ => return Err(bad(format!("unexpected tensor `{name}`"))),
            }
        }
        let meta = meta.ok_or_else(|| bad("no `meta` header".to_string()))?;
        let bytes = Vec::<u8>::try_from(&meta).map_err(|e| bad(e.to_string()))?;
        let meta: Json = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if meta["version"].as_i64() != Some(VERSION) {
            return Err(bad(format!("version {} is not {VERSION}", meta["version"])));
        }
        let field = |name: &str| bad(format!("header field `{name}` is missing or malformed"));
        let epoch = meta["epoch"].as_u64().ok_or_else(|| field("epoch"))? as usize;
        let best = match &meta["best"] {
            Json::Null => None,
            b => {
                let acc = b[0].as_f64().ok_or_else(|| field("best"))?;
                let at = b[1].as_u64().ok_or_else(|| field("best"))? as usize;
                Some((acc, at, best))
            }
        };
        let plateau = match &meta["plateau"] {
            Json::Null => None,
            p => Some((
                p[0].as_f64().unwrap_or(f64::INFINITY),
                p[1].as_u64().ok_or_else(|| field("plateau"))? as usize,
            )),
        };
        Ok(Checkpoint {
            epoch,
            model,
            best,
            optimizer,
            steps: meta["steps"].as_i64().ok_or_else(|| field("steps"))?,
            schedule: ScheduleState {
                lr: meta["lr"].as_f64().ok_or_else(|| field("lr"))?,
                plateau,
            },
            train_stats: meta["train_stats"]
                .as_array()
                .cloned()
                .ok_or_else(|| field("train_stats"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let checkpoint = Checkpoint {
            epoch: 2,
            model: vec![("core.w".into(), w.shallow_clone())],
            best: Some((81.5, 1, vec![("core.w".into(), w.g_mul_scalar(2.0))])),
            optimizer: vec![("core.w/exp_avg".into(), w.g_mul_scalar(0.5))],
            steps: 40,
            schedule: ScheduleState {
                lr: 1e-3,
                plateau: Some((f64::INFINITY, 0)),
            },
            train_stats: vec![json!({"dev_acc": 80.0}), json!({"dev_acc": 81.5})],
        };
        checkpoint.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!((back.epoch, back.steps), (2, 40));
        assert_eq!(back.schedule.lr, 1e-3);
        // JSON has no infinity: an unset plateau best reads back as infinity.
        assert_eq!(back.schedule.plateau, Some((f64::INFINITY, 0)));
        assert_eq!(back.train_stats, checkpoint.train_stats);
        let (acc, at, best) = back.best.unwrap();
        assert_eq!((acc, at, best[0].0.as_str()), (81.5, 1, "core.w"));
        assert_eq!(Vec::<f32>::try_from(&best[0].1).unwrap(), [2.0, 4.0, 6.0]);
        assert_eq!(back.optimizer[0].0, "core.w/exp_avg");

        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = Checkpoint::load(&path).err().unwrap().to_string();
        assert!(err.contains("not a readable checkpoint"), "{err}");
    }
}
