//! The models: each has a `core` and a `readout` part, returns named outputs, and names its
//! parameters as the PyTorch module of the same architecture does (`bias_transfer_rs.model`
//! in Python holds those modules).

pub mod cnn;
pub mod layers;
pub mod resnet;
pub mod vgg;

use tch::{nn, Kind, Tensor};

use super::{Arch, ModelSpec};

pub use layers::{reset_readout, set_channels_last};

/// Named outputs of a forward pass.
pub struct Outputs {
    /// The flattened core representation.
    pub core: Tensor,
    pub logits: Tensor,
}

/// A model: a forward pass in training or evaluation mode.
pub trait Network: Send + std::fmt::Debug {
    /// Run the model on a batch `[N, C, H, W]`; `train` selects batch statistics and
    /// dropout.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Outputs;
}

/// A model: the network and, for noise-adversarial training, the head predicting the
/// noise from the core (`noise_readout`, a `Linear(core width, 1)`).
#[derive(Debug)]
pub struct Model {
    pub net: Box<dyn Network>,
    pub noise_readout: Option<nn::Linear>,
}

impl Model {
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Outputs {
        self.net.forward_t(xs, train)
    }
}

/// Create the variables of the model `spec` describes under `root`.
pub fn build(root: &nn::Path, spec: &ModelSpec) -> Model {
    let net: Box<dyn Network> = match spec.arch {
        Arch::Cnn => Box::new(cnn::SmallCnn::new(root, spec)),
        Arch::Mlp => Box::new(cnn::Mlp::new(root, spec)),
        Arch::ResNet(depth) => Box::new(resnet::ResNet::new(root, spec, depth)),
        Arch::Vgg { depth, batch_norm } => Box::new(vgg::Vgg::new(root, spec, depth, batch_norm)),
    };
    let noise_readout = spec.noise_adv.map(|_| {
        // The core's width, from one blank image in evaluation mode (no state changes).
        let side = spec.input_size;
        let blank = Tensor::zeros(
            [1, spec.in_channels, side, side],
            (Kind::Float, root.device()),
        );
        let width = tch::no_grad(|| net.forward_t(&blank, false).core.size()[1]);
        nn::linear(root / "noise_readout", width, 1, Default::default())
    });
    Model { net, noise_readout }
}
