//! The small CNN for 28 px grayscale data: two conv + pooling blocks as `core`, a linear
//! `readout`. Parameter names match the PyTorch module
//! `core = {conv1: Conv2d(1, 32, 3, padding=1), conv2: Conv2d(32, 64, 3, padding=1)}`,
//! `readout = Linear(64 * 7 * 7, num_classes)`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::ModelSpec;

/// Named outputs of a forward pass.
pub struct Outputs {
    /// The flattened core representation.
    pub core: Tensor,
    pub logits: Tensor,
}

/// The small CNN.
#[derive(Debug)]
pub struct SmallCnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    readout: nn::Linear,
    readout_shape: (i64, i64),
}

const HIDDEN: i64 = 64 * 7 * 7;

impl SmallCnn {
    /// Create the model's variables under `root` (`core.*` and `readout.*`).
    pub fn new(root: &nn::Path, spec: &ModelSpec) -> SmallCnn {
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let core = root / "core";
        SmallCnn {
            conv1: nn::conv2d(&core / "conv1", 1, 32, 3, conv),
            conv2: nn::conv2d(&core / "conv2", 32, 64, 3, conv),
            readout: nn::linear(
                root / "readout",
                HIDDEN,
                spec.num_classes,
                Default::default(),
            ),
            readout_shape: (HIDDEN, spec.num_classes),
        }
    }

    /// Run the model on a batch `[N, 1, 28, 28]`.
    pub fn forward(&self, xs: &Tensor) -> Outputs {
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

    /// Re-initialise the readout as a fresh `Linear` would be.
    pub fn reset_readout(&mut self) {
        let (fan_in, out) = self.readout_shape;
        let bound = 1.0 / (fan_in as f64).sqrt();
        tch::no_grad(|| {
            self.readout
                .ws
                .copy_(&(Tensor::rand_like(&self.readout.ws) * 2.0 * bound - bound));
            if let Some(bs) = &mut self.readout.bs {
                bs.copy_(&(Tensor::rand([out], (bs.kind(), bs.device())) * 2.0 * bound - bound));
            }
        });
    }
}
