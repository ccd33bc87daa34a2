"""A trained model for notebooks: callable on numpy arrays or torch tensors, its weights as
a torch state dict, and the same architecture as a `torch.nn.Module`."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bias_transfer_rs import _core

GRAY = ("MNIST", "FashionMNIST")


class SmallCnn(nn.Module):
    """The small CNN (`cnn_builder="cnn"`): two conv + pooling blocks as `core`, a linear
    `readout`; returns the named outputs `logits` and `core`."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28
                 ) -> None:
        super().__init__()
        self.core = nn.Module()
        self.core.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.core.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.readout = nn.Linear(64 * (input_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = nn.functional.max_pool2d(torch.relu(self.core.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.core.conv2(x)), 2)
        core = x.flatten(1)
        return {"logits": self.readout(core), "core": core}


class Mlp(nn.Module):
    """The MLP (`cnn_builder="mlp"`): two hidden layers of 512 and 256 units as `core`."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28
                 ) -> None:
        super().__init__()
        self.core = nn.Module()
        self.core.fc1 = nn.Linear(in_channels * input_size ** 2, 512)
        self.core.fc2 = nn.Linear(512, 256)
        self.readout = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        core = torch.relu(self.core.fc2(torch.relu(self.core.fc1(x.flatten(1)))))
        return {"logits": self.readout(core), "core": core}


RESNET_LAYOUTS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                  26: ("bottleneck", [1, 2, 4, 1]), 38: ("bottleneck", [2, 3, 5, 2]),
                  50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
                  152: ("bottleneck", [3, 8, 36, 3])}


class _Residual(nn.Module):
    def __init__(self, block: str, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        expansion = 4 if block == "bottleneck" else 1
        c_out = planes * expansion
        if block == "basic":
            shapes = [(c_in, planes, 3, stride), (planes, planes, 3, 1)]
        else:
            shapes = [(c_in, planes, 1, 1), (planes, planes, 3, stride), (planes, c_out, 1, 1)]
        self.depth = len(shapes)
        for i, (a, b, k, s) in enumerate(shapes, 1):
            setattr(self, f"conv{i}", nn.Conv2d(a, b, k, s, padding=k // 2, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(b))
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i in range(1, self.depth + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
            if i < self.depth:
                y = torch.relu(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + shortcut)


class ResNet(nn.Module):
    """A CIFAR-style ResNet (`cnn_builder="resnet"`), named as torchvision's under `core.`."""

    def __init__(self, depth: int = 50, num_classes: int = 10, core_stride: int = 1,
                 conv_stem_kernel_size: int = 3) -> None:
        super().__init__()
        block, counts = RESNET_LAYOUTS[depth]
        k = conv_stem_kernel_size
        self.core = nn.Module()
        self.core.conv1 = nn.Conv2d(3, 64, k, 1, padding=k // 2, bias=False)
        self.core.bn1 = nn.BatchNorm2d(64)
        c_in = 64
        for stage, (count, stride, planes) in enumerate(
                zip(counts, [core_stride, 2, 2, 2], [64, 128, 256, 512], strict=True), 1):
            blocks = []
            for i in range(count):
                blocks.append(_Residual(block, c_in, planes, stride if i == 0 else 1))
                c_in = planes * (4 if block == "bottleneck" else 1)
            setattr(self.core, f"layer{stage}", nn.Sequential(*blocks))
        self.readout = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.relu(self.core.bn1(self.core.conv1(x)))
        for stage in range(1, 5):
            x = getattr(self.core, f"layer{stage}")(x)
        core = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return {"logits": self.readout(core), "core": core}


VGG_LAYOUTS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
         "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
         512, 512, 512, "M"],
}


class Vgg(nn.Module):
    """A VGG (`cnn_builder="vgg"`): torchvision's `features` as `core`, a dense or conv
    readout."""

    def __init__(self, depth: int = 11, batch_norm: bool = False, num_classes: int = 10,
                 readout_type: str = "dense", input_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for width in VGG_LAYOUTS[depth]:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(c_in, int(width), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(width)))
            layers.append(nn.ReLU())
            c_in = int(width)
        self.core = nn.Sequential(*layers)
        self.readout_type = readout_type
        if readout_type == "dense":
            side = input_size // 32
            self.readout = nn.Sequential(
                nn.Linear(c_in * side * side, 4096), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, num_classes))
        else:
            self.readout = nn.Sequential(nn.Conv2d(c_in, 512, 1), nn.ReLU(),
                                         nn.Conv2d(512, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.core(x)
        core = features.flatten(1)
        if self.readout_type == "dense":
            logits = self.readout(core)
        else:
            logits = self.readout(features).amax(dim=(2, 3))
        return {"logits": logits, "core": core}


def build(model_config: dict[str, Any]) -> nn.Module:
    """The PyTorch module of a model config, with the parameter names of the Rust core; a
    noise-adversarial config adds the head `noise_readout`, a `Linear(core width, 1)`."""
    module = _network(model_config)
    if model_config.get("noise_adv_classification") or model_config.get("noise_adv_regression"):
        size = int(model_config.get("input_size") or 32)
        channels = _channels(model_config)
        with torch.no_grad():
            width = module.eval()(torch.zeros(1, channels, size, size))["core"].shape[1]
        module.noise_readout = nn.Linear(width, 1)
    return module


def _channels(model_config: dict[str, Any]) -> int:
    """Input channels: ResNets and VGGs take 3, the small models those of the dataset."""
    small = model_config.get("cnn_builder") in ("cnn", "mlp")
    return 1 if small and model_config.get("dataset_cls") in GRAY else 3


def _check(model_config: dict[str, Any]) -> None:
    """The checks of the Rust core's model options, with its messages, as `ValueError`."""
    builder = model_config.get("cnn_builder", "resnet")
    kind = str(model_config.get("type", "50"))
    if builder == "resnet" and not (kind.isdigit() and int(kind) in RESNET_LAYOUTS):
        valid = ", ".join(f"`{d}`" for d in sorted(RESNET_LAYOUTS))
        raise ValueError(f"`type` `{kind}` is not a `resnet` model; valid: {valid}")
    depth = kind.removesuffix("_bn")
    if builder == "vgg" and not (depth.isdigit() and int(depth) in VGG_LAYOUTS):
        raise ValueError(f"`type` `{kind}` is not a `vgg` model; valid: 11, 13, 16, 19, with "
                         "an optional `_bn`")
    if builder not in ("resnet", "vgg", "cnn", "mlp"):
        raise ValueError(f"`cnn_builder` `{builder}` is unknown; valid: `resnet`, `vgg`, "
                         "`cnn`, `mlp`")
    readout = model_config.get("readout_type", "dense")
    if readout not in ("dense", "conv"):
        raise ValueError(f"`readout_type` `{readout}` is unknown; valid: `dense`, `conv`")
    size = int(model_config.get("input_size", 32))
    if builder == "vgg" and size % 32:
        raise ValueError(f"`input_size={size}`: a VGG pools five times and takes a multiple "
                         "of 32 px")
    if int(model_config.get("num_classes", 10)) < 1:
        raise ValueError("`num_classes` must be at least 1")


def _network(model_config: dict[str, Any]) -> nn.Module:
    _check(model_config)
    builder = model_config.get("cnn_builder", "resnet")
    kind = str(model_config.get("type", "50"))
    num_classes = int(model_config.get("num_classes", 10))
    input_size = int(model_config.get("input_size", 32))
    if builder in ("cnn", "mlp"):
        cls = SmallCnn if builder == "cnn" else Mlp
        return cls(num_classes, _channels(model_config), input_size)
    if builder == "resnet":
        stride = model_config.get("core_stride", 2 if input_size > 32 else 1)
        return ResNet(int(kind), num_classes, int(stride),
                      int(model_config.get("conv_stem_kernel_size", 3)))
    return Vgg(int(kind.removesuffix("_bn")), kind.endswith("_bn"), num_classes,
               str(model_config.get("readout_type", "dense")), input_size)


class TrainedModel:
    """A trained model from the database, run by the Rust core on the CPU.

    Calling it on a batch `[N, C, H, W]` (or `[N, H, W]` for one channel) of float images,
    as the network saw them in training (pixels in [0, 1], then `normalization` applied),
    returns the named outputs `{"logits", "core"}` as torch tensors."""

    def __init__(self, core: _core.TrainedModel) -> None:
        self._core = core

    @property
    def key(self) -> str:
        return self._core.key

    @property
    def model_config(self) -> dict[str, Any]:
        return self._core.model_config

    @property
    def dataset_config(self) -> dict[str, Any]:
        return self._core.dataset_config

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        """`(means, stds)` per channel, applied to pixels in [0, 1] in training; zeros and
        ones when off."""
        return self._core.normalization

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._core.input_shape

    def __repr__(self) -> str:
        return f"TrainedModel(key={self.key!r}, model={self.model_config.get('cnn_builder')!r})"

    def normalize(self, images: npt.ArrayLike | torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (or uint8 in [0, 255]) as the network saw them in training."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor)
                            else images)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        means, stds = self.normalization
        shape = (len(means),) + (1,) * 2
        return (x - torch.tensor(means).view(shape)) / torch.tensor(stds).view(shape)

    def __call__(self, x: npt.ArrayLike | torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(x, torch.Tensor):
            array = x.detach().to("cpu", torch.float32).numpy()
        else:
            array = np.asarray(x, dtype=np.float32)
        if array.ndim == 3 and self.input_shape[0] == 1:
            array = array[:, None]
        if array.ndim != 4:
            raise ValueError(f"expected a batch [N, C, H, W], got shape {list(array.shape)}")
        logits, core = self._core.forward(np.ascontiguousarray(array))
        return {"logits": torch.from_numpy(logits), "core": torch.from_numpy(core)}

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The weights by their PyTorch names, as torch tensors (copies)."""
        return OrderedDict((name, torch.from_numpy(array))
                           for name, array in self._core.state_dict())

    def to_torch(self) -> nn.Module:
        """A `torch.nn.Module` of the same architecture with these weights, in eval mode."""
        module = build(self.model_config)
        module.load_state_dict(self.state_dict())
        return module.eval()


def load_weights(model_config: dict[str, Any], dataset_config: dict[str, Any],
                 weights: str | os.PathLike[str]) -> TrainedModel:
    """The model of `model_config` with the weights of a safetensors file (PyTorch names,
    e.g. saved from `build(model_config).state_dict()`), run by the Rust core."""
    return TrainedModel(_core.load_weights(model_config, dataset_config, weights))
