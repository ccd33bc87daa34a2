//! Optimisers with the update rules and defaults of PyTorch's `Adam`, `SGD` and `RMSprop`,
//! written over tch tensors so their state can be saved in checkpoints and restored.
//!
//! Weight decay is the L2 term PyTorch adds to the gradient (`grad + wd * param`), not
//! decoupled decay. Parameters without a gradient (frozen ones) are left alone, as PyTorch
//! leaves them.

use std::collections::BTreeMap;

use tch::{nn, Tensor};

use super::{OptimizerKind, TrainerSpec};

const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;
const RMSPROP_ALPHA: f64 = 0.99;
const RMSPROP_EPS: f64 = 1e-8;

/// An optimiser over the trainable variables of a `VarStore`.
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    amsgrad: bool,
    /// Steps taken so far (Adam's bias correction counts them).
    steps: i64,
    params: Vec<(String, Tensor)>,
    /// Per parameter, its state tensors by slot name (`exp_avg`, `momentum_buffer`, ...).
    state: BTreeMap<String, BTreeMap<&'static str, Tensor>>,
}

impl Optimizer {
    /// An optimiser for every variable of `vs`, configured by the trainer.
    pub fn new(vs: &nn::VarStore, spec: &TrainerSpec) -> Optimizer {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Optimizer {
            kind: spec.optimizer,
            lr: spec.lr,
            weight_decay: spec.weight_decay,
            momentum: spec.momentum,
            amsgrad: spec.amsgrad,
            steps: 0,
            params,
            state: BTreeMap::new(),
        }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Forget the gradients of the last step.
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.detach_();
                let _ = grad.zero_();
            }
        }
    }

    /// Backpropagate `loss` and take one step.
    pub fn backward_step(&mut self, loss: &Tensor) {
        self.zero_grad();
        loss.backward();
        self.step();
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        self.steps += 1;
        tch::no_grad(|| {
            for (name, p) in &self.params {
                let grad = p.grad();
                if !grad.defined() || !p.requires_grad() {
                    continue;
                }
                let grad = match self.weight_decay {
                    0.0 => grad,
                    wd => &grad + p * wd,
                };
                let state = self.state.entry(name.clone()).or_default();
                let mut p = p.shallow_clone();
                match self.kind {
                    OptimizerKind::Adam => {
                        adam(&mut p, &grad, state, self.lr, self.amsgrad, self.steps)
                    }
                    OptimizerKind::Sgd => sgd(&mut p, &grad, state, self.lr, self.momentum),
                    OptimizerKind::RmsProp => rmsprop(&mut p, &grad, state, self.lr, self.momentum),
                }
            }
        });
    }

    /// The state to checkpoint: `(name, tensor)` pairs as `<param>/<slot>`, and the step
    /// count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let tensors = self
            .state
            .iter()
            .flat_map(|(param, slots)| {
                slots
                    .iter()
                    .map(move |(slot, t)| (format!("{param}/{slot}"), t.shallow_clone()))
            })
            .collect();
        (tensors, self.steps)
    }

    /// Restore a state saved by [`Optimizer::state`]; names of unknown parameters or slots
    /// are an error naming them.
    pub fn restore(&mut self, tensors: Vec<(String, Tensor)>, steps: i64) -> Result<(), String> {
        let slots: &[&'static str] = &[
            "exp_avg",
            "exp_avg_sq",
            "max_exp_avg_sq",
            "momentum_buffer",
            "square_avg",
        ];
        let device = self.params.first().map(|(_, p)| p.device());
        let mut state: BTreeMap<String, BTreeMap<&'static str, Tensor>> = BTreeMap::new();
        for (name, tensor) in tensors {
            let (param, slot) = name
                .rsplit_once('/')
                .ok_or_else(|| format!("optimiser state `{name}` has no slot"))?;
            let slot = slots
                .iter()
                .find(|s| **s == slot)
                .ok_or_else(|| format!("optimiser state `{name}`: unknown slot `{slot}`"))?;
            if !self.params.iter().any(|(n, _)| n == param) {
                return Err(format!(
                    "optimiser state `{name}`: the model has no parameter `{param}`"
                ));
            }
            let tensor = match device {
                Some(d) => tensor.to_device(d),
                None => tensor,
            };
            state
                .entry(param.to_string())
                .or_default()
                .insert(slot, tensor);
        }
        self.state = state;
        self.steps = steps;
        Ok(())
    }
}

/// `torch.optim.Adam`, single-tensor path.
fn adam(
    p: &mut Tensor,
    grad: &Tensor,
    state: &mut BTreeMap<&'static str, Tensor>,
    lr: f64,
    amsgrad: bool,
    step: i64,
) {
    let (beta1, beta2) = ADAM_BETAS;
    let m = state.entry("exp_avg").or_insert_with(|| grad.zeros_like());
    let _ = m.lerp_(grad, 1.0 - beta1);
    let m = m.shallow_clone();
    let v = state
        .entry("exp_avg_sq")
        .or_insert_with(|| grad.zeros_like());
    let _ = v.g_mul_scalar_(beta2);
    let _ = v.g_add_(&(grad * grad).g_mul_scalar(1.0 - beta2));
    let mut second = v.shallow_clone();
    if amsgrad {
        let max = state
            .entry("max_exp_avg_sq")
            .or_insert_with(|| grad.zeros_like());
        max.copy_(&max.maximum(&second));
        second = max.shallow_clone();
    }
    let bias1 = 1.0 - beta1.powf(step as f64);
    let bias2_sqrt = (1.0 - beta2.powf(step as f64)).sqrt();
    let denom = second.sqrt() / bias2_sqrt + ADAM_EPS;
    let _ = p.g_sub_(&(&m / &denom).g_mul_scalar(lr / bias1));
}

/// `torch.optim.SGD` without dampening or Nesterov.
fn sgd(
    p: &mut Tensor,
    grad: &Tensor,
    state: &mut BTreeMap<&'static str, Tensor>,
    lr: f64,
    momentum: f64,
) {
    let direction = match momentum {
        0.0 => grad.shallow_clone(),
        _ => match state.get_mut("momentum_buffer") {
            Some(buf) => {
                let _ = buf.g_mul_scalar_(momentum).g_add_(grad);
                buf.shallow_clone()
            }
            None => {
                let buf = grad.detach().copy();
                state.insert("momentum_buffer", buf.shallow_clone());
                buf
            }
        },
    };
    let _ = p.g_add_(&direction.g_mul_scalar(-lr));
}

/// `torch.optim.RMSprop`, not centred.
fn rmsprop(
    p: &mut Tensor,
    grad: &Tensor,
    state: &mut BTreeMap<&'static str, Tensor>,
    lr: f64,
    momentum: f64,
) {
    let sq = state
        .entry("square_avg")
        .or_insert_with(|| grad.zeros_like());
    let _ = sq.g_mul_scalar_(RMSPROP_ALPHA);
    let _ = sq.g_add_(&(grad * grad).g_mul_scalar(1.0 - RMSPROP_ALPHA));
    let avg = sq.sqrt() + RMSPROP_EPS;
    match momentum {
        0.0 => {
            let _ = p.g_add_(&(grad / &avg).g_mul_scalar(-lr));
        }
        _ => {
            let buf = state
                .entry("momentum_buffer")
                .or_insert_with(|| grad.zeros_like());
            let _ = buf.g_mul_scalar_(momentum).g_add_(&(grad / &avg));
            let _ = p.g_add_(&buf.g_mul_scalar(-lr));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Value;

    /// Three steps on `sum(k * c * p^2)` with `k` = 10, 0.1, 0.1 (a shrinking gradient,
    /// so AMSGrad's maximum matters), from `p = [0.5, -1, 2]`, `c = [1, 2, 3]`.
    fn three_steps(options: &[(&'static str, Value)]) -> Vec<f32> {
        let spec = TrainerSpec::from_config(&Value::dict(options.iter().cloned())).unwrap();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = vs
            .root()
            .var_copy("p", &Tensor::from_slice(&[0.5f32, -1.0, 2.0]));
        let c = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let mut opt = Optimizer::new(&vs, &spec);
        for k in [10.0, 0.1, 0.1] {
            let loss = (&p * &p * &c).g_mul_scalar(k).sum(tch::Kind::Float);
            opt.backward_step(&loss);
        }
        Vec::<f32>::try_from(&p).unwrap()
    }

    fn assert_close(actual: &[f32], expected: &[f32]) {
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{actual:?} != {expected:?}");
        }
    }

    /// The expected values are what torch 2.13's optimisers give for the same steps.
    #[test]
    fn steps_match_pytorch() {
        let s = |v: &str| Value::Str(v.into());
        let f = Value::Float;
        type Case = (Vec<(&'static str, Value)>, [f32; 3]);
        let cases: [Case; 6] = [
            (
                vec![("lr", f(0.1)), ("weight_decay", f(0.01))],
                [0.279_649_6, -0.779_442_7, 1.779_336_2],
            ),
            (
                vec![
                    ("lr", f(0.1)),
                    ("weight_decay", f(0.01)),
                    ("amsgrad", Value::Bool(true)),
                ],
                [0.279_730_6, -0.779_522_4, 1.779_415],
            ),
            (
                vec![
                    ("optimizer", s("SGD")),
                    ("lr", f(0.01)),
                    ("momentum", f(0.9)),
                    ("weight_decay", f(0.01)),
                ],
                [0.226_619_68, 0.089_917_33, -1.260_071_4],
            ),
            (
                vec![
                    ("optimizer", s("SGD")),
                    ("lr", f(0.01)),
                    ("momentum", f(0.0)),
                    ("weight_decay", f(0.0)),
                ],
                [0.398_401_6, -0.595_209_66, 0.790_428_8],
            ),
            (
                vec![
                    ("optimizer", s("RMSprop")),
                    ("lr", f(0.01)),
                    ("momentum", f(0.9)),
                    ("weight_decay", f(0.01)),
                ],
                [0.226_741_42, -0.726_401_5, 1.726_227_4],
            ),
            (
                vec![
                    ("optimizer", s("RMSprop")),
                    ("lr", f(0.01)),
                    ("momentum", f(0.0)),
                    ("weight_decay", f(0.0)),
                ],
                [0.398_389_6, -0.898_187_4, 1.898_086_2],
            ),
        ];
        for (options, expected) in cases {
            assert_close(&three_steps(&options), &expected);
        }
    }

    #[test]
    fn state_restores_into_a_new_optimizer() {
        let spec = TrainerSpec::from_config(&Value::dict([("lr", Value::Float(0.1))])).unwrap();
        let run = |split: bool| {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let p = vs
                .root()
                .var_copy("p", &Tensor::from_slice(&[0.5f32, -1.0]));
            let mut opt = Optimizer::new(&vs, &spec);
            let loss = || (&p * &p).sum(tch::Kind::Float);
            opt.backward_step(&loss());
            if split {
                let (state, steps) = opt.state();
                let copies = state.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
                opt = Optimizer::new(&vs, &spec);
                opt.restore(copies, steps).unwrap();
            }
            opt.backward_step(&loss());
            Vec::<f32>::try_from(&p).unwrap()
        };
        assert_eq!(run(false), run(true));
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut opt = Optimizer::new(&vs, &spec);
        let err = opt
            .restore(
                vec![("q/exp_avg".into(), Tensor::zeros([1], tch::kind::FLOAT_CPU))],
                1,
            )
            .unwrap_err();
        assert!(err.contains("no parameter `q`"), "{err}");
    }
}
