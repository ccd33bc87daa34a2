//! CIFAR-style ResNets: a 64-channel stem (kernel `conv_stem_kernel_size`, stride 1), four
//! stages of 64/128/256/512 planes with strides `[core_stride, 2, 2, 2]`, global average
//! pooling, a linear readout. Names follow torchvision under `core.` (`conv1`, `bn1`,
//! `layer1.0.conv1`, ..., `layer2.0.downsample.0`) and `readout.`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::layers::{conv, BatchNorm};
use super::{Network, Outputs};
use crate::train::ModelSpec;

/// The two block kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    fn expansion(self) -> i64 {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// The block kind and blocks per stage of a ResNet depth, if it is one.
pub fn layout(depth: u32) -> Option<(Block, [usize; 4])> {
    Some(match depth {
        18 => (Block::Basic, [2, 2, 2, 2]),
        34 => (Block::Basic, [3, 4, 6, 3]),
        26 => (Block::Bottleneck, [1, 2, 4, 1]),
        38 => (Block::Bottleneck, [2, 3, 5, 2]),
        50 => (Block::Bottleneck, [3, 4, 6, 3]),
        101 => (Block::Bottleneck, [3, 4, 23, 3]),
        152 => (Block::Bottleneck, [3, 8, 36, 3]),
        _ => return None,
    })
}

/// The depths [`layout`] knows.
pub const DEPTHS: [u32; 7] = [18, 26, 34, 38, 50, 101, 152];

#[derive(Debug)]
struct Unit {
    conv: nn::Conv2D,
    bn: BatchNorm,
}

impl Unit {
    fn new(path: &nn::Path, i: usize, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> Unit {
        Unit {
            conv: conv(
                path / format!("conv{i}"),
                c_in,
                c_out,
                kernel,
                stride,
                false,
            ),
            bn: BatchNorm::new(&(path / format!("bn{i}")), c_out),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&xs.apply(&self.conv), train)
    }
}

#[derive(Debug)]
struct Residual {
    units: Vec<Unit>,
    downsample: Option<(nn::Conv2D, BatchNorm)>,
}

impl Residual {
    fn new(path: &nn::Path, block: Block, c_in: i64, planes: i64, stride: i64) -> Residual {
        let c_out = planes * block.expansion();
        let units = match block {
            Block::Basic => vec![
                Unit::new(path, 1, c_in, planes, 3, stride),
                Unit::new(path, 2, planes, planes, 3, 1),
            ],
            Block::Bottleneck => vec![
                Unit::new(path, 1, c_in, planes, 1, 1),
                Unit::new(path, 2, planes, planes, 3, stride),
                Unit::new(path, 3, planes, c_out, 1, 1),
            ],
        };
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let down = path / "downsample";
            (
                conv(&down / "0", c_in, c_out, 1, stride, false),
                BatchNorm::new(&(&down / "1"), c_out),
            )
        });
        Residual { units, downsample }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.units.len() - 1;
        let mut ys = xs.shallow_clone();
        for (i, unit) in self.units.iter().enumerate() {
            ys = unit.forward_t(&ys, train);
            if i < last {
                ys = ys.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&xs.apply(conv), train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// A ResNet.
#[derive(Debug)]
pub struct ResNet {
    stem: Unit,
    blocks: Vec<Residual>,
    readout: nn::Linear,
}

impl ResNet {
    /// Create the model's variables under `root`; `depth` must be one of [`DEPTHS`].
    pub fn new(root: &nn::Path, spec: &ModelSpec, depth: u32) -> ResNet {
        let (block, counts) = layout(depth).unwrap_or((Block::Basic, [2, 2, 2, 2]));
        let core = root / "core";
        let stem = Unit::new(&core, 1, spec.in_channels, 64, spec.stem_kernel, 1);
        let strides = [spec.core_stride, 2, 2, 2];
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, ((&count, stride), planes)) in counts
            .iter()
            .zip(strides)
            .zip([64, 128, 256, 512])
            .enumerate()
        {
            let layer = &core / format!("layer{}", stage + 1);
            for i in 0..count {
                let stride = if i == 0 { stride } else { 1 };
                blocks.push(Residual::new(&(&layer / i), block, c_in, planes, stride));
                c_in = planes * block.expansion();
            }
        }
        let readout = nn::linear(root / "readout", c_in, spec.num_classes, Default::default());
        ResNet {
            stem,
            blocks,
            readout,
        }
    }
}

impl Network for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Outputs {
        let mut ys = self.stem.forward_t(xs, train).relu();
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        let core = ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = self.readout.forward(&core);
        Outputs { core, logits }
    }
}
