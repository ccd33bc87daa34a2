//! VGG 11/13/16/19, with or without batch norm, as `core` (torchvision's `features`, named
//! `core.0`, `core.1`, ...) and a `"dense"` readout (`readout.0`, `.3`, `.6`: Linear 4096,
//! 4096, classes, with ReLU and dropout between) or a `"conv"` readout (`readout.0`, `.2`:
//! 1x1 convolutions to 512 and to the classes, then global max pooling).

use tch::nn::{self, Module};
use tch::Tensor;

use super::layers::{conv, BatchNorm};
use super::{Network, Outputs};
use crate::train::{ModelSpec, Readout};

/// Output channels of each conv layer; `0` marks a 2x2 max pooling.
pub fn layout(depth: u32) -> Option<&'static [i64]> {
    Some(match depth {
        11 => &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
        13 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
        ],
        16 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
        ],
        19 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512,
            512, 0,
        ],
        _ => return None,
    })
}

/// The depths [`layout`] knows.
pub const DEPTHS: [u32; 4] = [11, 13, 16, 19];

const DROPOUT: f64 = 0.5;

#[derive(Debug)]
enum Layer {
    Conv(Box<(nn::Conv2D, Option<BatchNorm>)>),
    Pool,
}

#[derive(Debug)]
enum Head {
    Dense(Box<[nn::Linear; 3]>),
    Conv(Box<[nn::Conv2D; 2]>),
}

/// A VGG.
#[derive(Debug)]
pub struct Vgg {
    layers: Vec<Layer>,
    head: Head,
}

impl Vgg {
    /// Create the model's variables under `root`; `depth` must be one of [`DEPTHS`].
    pub fn new(root: &nn::Path, spec: &ModelSpec, depth: u32, batch_norm: bool) -> Vgg {
        let core = root / "core";
        let mut layers = Vec::new();
        let (mut index, mut c_in) = (0, spec.in_channels);
        for &width in layout(depth).unwrap_or(&[]) {
            if width == 0 {
                layers.push(Layer::Pool);
                index += 1;
                continue;
            }
            let conv = conv(&core / index, c_in, width, 3, 1, true);
            let bn = batch_norm.then(|| BatchNorm::new(&(&core / (index + 1)), width));
            index += if batch_norm { 3 } else { 2 };
            layers.push(Layer::Conv(Box::new((conv, bn))));
            c_in = width;
        }
        let readout = root / "readout";
        let side = spec.input_size / 32;
        let head = match spec.readout {
            Readout::Dense => {
                let linear = |i: i64, a, b| nn::linear(&readout / i, a, b, Default::default());
                Head::Dense(Box::new([
                    linear(0, c_in * side * side, 4096),
                    linear(3, 4096, 4096),
                    linear(6, 4096, spec.num_classes),
                ]))
            }
            Readout::Conv => Head::Conv(Box::new([
                conv(&readout / 0, c_in, 512, 1, 1, true),
                conv(&readout / 2, 512, spec.num_classes, 1, 1, true),
            ])),
        };
        Vgg { layers, head }
    }
}

impl Network for Vgg {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Outputs {
        let mut ys = xs.shallow_clone();
        for layer in &self.layers {
            ys = match layer {
                Layer::Conv(layer) => {
                    let (conv, bn) = layer.as_ref();
                    let ys = ys.apply(conv);
                    match bn {
                        Some(bn) => bn.forward_t(&ys, train),
                        None => ys,
                    }
                    .relu()
                }
                Layer::Pool => ys.max_pool2d_default(2),
            };
        }
        match &self.head {
            Head::Dense(head) => {
                let [fc1, fc2, fc3] = head.as_ref();
                let core = ys.flatten(1, -1);
                let hidden = fc1.forward(&core).relu().dropout(DROPOUT, train);
                let hidden = fc2.forward(&hidden).relu().dropout(DROPOUT, train);
                let logits = fc3.forward(&hidden);
                Outputs { core, logits }
            }
            Head::Conv(head) => {
                let [c1, c2] = head.as_ref();
                let logits = ys.apply(c1).relu().apply(c2).amax([2, 3], false);
                Outputs {
                    core: ys.flatten(1, -1),
                    logits,
                }
            }
        }
    }
}
