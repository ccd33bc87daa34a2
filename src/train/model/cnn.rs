//! Small models for MNIST-like data.
//!
//! The small CNN: two conv + pooling blocks as `core`, a linear `readout`, as the PyTorch
//! module `core = {conv1: Conv2d(C, 32, 3, padding=1), conv2: Conv2d(32, 64, 3, padding=1)}`,
//! `readout = Linear(64 * (S / 4)^2, num_classes)`. The MLP: `core = {fc1: Linear(C * S^2,
//! 512), fc2: Linear(512, 256)}` with ReLUs, `readout = Linear(256, num_classes)`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::layers::conv;
use super::{Network, Outputs};
use crate::train::ModelSpec;

/// The small CNN.
#[derive(Debug)]
pub struct SmallCnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    readout: nn::Linear,
}

impl SmallCnn {
    /// Create the model's variables under `root` (`core.*` and `readout.*`).
    pub fn new(root: &nn::Path, spec: &ModelSpec) -> SmallCnn {
        let core = root / "core";
        let side = spec.input_size / 4;
        SmallCnn {
            conv1: conv(&core / "conv1", spec.in_channels, 32, 3, 1, true),
            conv2: conv(&core / "conv2", 32, 64, 3, 1, true),
            readout: nn::linear(
                root / "readout",
                64 * side * side,
                spec.num_classes,
                Default::default(),
            ),
        }
    }
}

impl Network for SmallCnn {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Outputs {
        let core = xs
            .apply(&self.conv1)
            .relu()
            .max_pool2d_default(2)
            .apply(&self.conv2)
            .relu()
            .max_pool2d_default(2)
            .flatten(1, -1);
        let logits = self.readout.forward(&core);
        Outputs { core, logits }
    }
}

/// Widths of the MLP's hidden layers.
const MLP_HIDDEN: [i64; 2] = [512, 256];

/// The MLP.
#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    readout: nn::Linear,
}

impl Mlp {
    /// Create the model's variables under `root` (`core.*` and `readout.*`).
    pub fn new(root: &nn::Path, spec: &ModelSpec) -> Mlp {
        let core = root / "core";
        let inputs = spec.in_channels * spec.input_size * spec.input_size;
        let [h1, h2] = MLP_HIDDEN;
        Mlp {
            fc1: nn::linear(&core / "fc1", inputs, h1, Default::default()),
            fc2: nn::linear(&core / "fc2", h1, h2, Default::default()),
            readout: nn::linear(root / "readout", h2, spec.num_classes, Default::default()),
        }
    }
}

impl Network for Mlp {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Outputs {
        let core = xs
            .flatten(1, -1)
            .apply(&self.fc1)
            .relu()
            .apply(&self.fc2)
            .relu();
        let logits = self.readout.forward(&core);
        Outputs { core, logits }
    }
}
