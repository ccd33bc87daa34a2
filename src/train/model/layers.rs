//! Layers shared by the models, named and shaped as their PyTorch counterparts.

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// `BatchNorm2d`: weight, bias, running mean and variance, and PyTorch's
/// `num_batches_tracked` counter, so a state dict loads strictly both ways.
#[derive(Debug)]
pub struct BatchNorm {
    inner: nn::BatchNorm,
    tracked: Tensor,
}

impl BatchNorm {
    /// A batch norm over `channels` at `path`, with PyTorch's eps and momentum.
    pub fn new(path: &nn::Path, channels: i64) -> BatchNorm {
        let inner = nn::batch_norm2d(path, channels, Default::default());
        let counter = Tensor::zeros([], (Kind::Int64, path.device()));
        let tracked = path.add("num_batches_tracked", counter, false);
        BatchNorm { inner, tracked }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            let mut tracked = self.tracked.shallow_clone();
            let _ = tch::no_grad(|| tracked.g_add_scalar_(1));
        }
        self.inner.forward_t(xs, train)
    }
}

/// Store the convolutions' weights (every 4-d variable) channels last, as PyTorch's
/// `module.to(memory_format=torch.channels_last)` does, when the model is on the CPU:
/// oneDNN then runs every convolution, forward and backward, on that layout, which is
/// faster there. `false` brings them back to PyTorch's default layout, which saving needs.
/// The values stay the same; only their order in memory changes.
pub fn set_channels_last(vs: &nn::VarStore, channels_last: bool) {
    if vs.device() != Device::Cpu {
        return;
    }
    for (_, mut var) in vs.variables() {
        if var.dim() != 4 {
            continue;
        }
        let data = match channels_last {
            // Explicit strides: a permuted copy would keep the old strides of a size-1
            // dimension (a first layer on one channel), and oneDNN reads the layout from them.
            true => {
                let size = var.size();
                let (c, h, w) = (size[1], size[2], size[3]);
                let strides = [h * w * c, 1, w * c, c];
                let mut out = Tensor::empty_strided(&size, strides, (var.kind(), Device::Cpu));
                out.copy_(&var);
                out
            }
            false => var.contiguous(),
        };
        tch::no_grad(|| var.set_data(&data.detach()));
    }
}

/// A 2-d convolution with PyTorch's default initialisation.
pub fn conv(
    path: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    bias: bool,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: kernel / 2,
        bias,
        ..Default::default()
    };
    nn::conv2d(path, c_in, c_out, kernel, config)
}

/// Re-initialise every variable under `readout.` as fresh PyTorch layers are: weights and
/// biases uniform in `±1 / sqrt(fan_in)`, the fan-in taken from the layer's weight; the
/// variables draw in name order, so a seed gives the same readout every time.
pub fn reset_readout(vs: &nn::VarStore) {
    let vars = vs.variables();
    // In name order: the draws must not depend on the map's order.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    tch::no_grad(|| {
        for (name, var) in names.into_iter().map(|n| (n, &vars[n])) {
            let Some(layer) = name.strip_prefix("readout.") else {
                continue;
            };
            let weight_name = match layer.rsplit_once('.') {
                Some((prefix, _)) => format!("readout.{prefix}.weight"),
                None => "readout.weight".to_string(),
            };
            let Some(weight) = vars.get(&weight_name) else {
                continue;
            };
            let fan_in: i64 = weight.size().iter().skip(1).product();
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            let mut var = var.shallow_clone();
            let _ = var.uniform_(-bound, bound);
        }
    });
}
