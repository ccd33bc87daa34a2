"""Quick start: noise augmentation and transfer on Fashion-MNIST; all modules merged."""

from . import fashion_noise

experiments = dict(fashion_noise.experiments)
transfer_experiments = dict(fashion_noise.transfer_experiments)
