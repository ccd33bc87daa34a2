"""A trained model for notebooks: callable on numpy arrays or torch tensors, its weights as
a torch state dict, and the same architecture as a `torch.nn.Module`."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bias_transfer_rs import _core


class SmallCnn(nn.Module):
    """The small CNN for 28 px grayscale images (`cnn_builder="cnn"`): two conv + pooling
    blocks as `core`, a linear `readout`; returns the named outputs `logits` and `core`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.core = nn.Module()
        self.core.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.core.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.readout = nn.Linear(64 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = nn.functional.max_pool2d(torch.relu(self.core.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.core.conv2(x)), 2)
        core = x.flatten(1)
        return {"logits": self.readout(core), "core": core}


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
    def normalization(self) -> tuple[float, float]:
        """`(mean, std)` applied to pixels in [0, 1] in training; `(0, 1)` when off."""
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
        mean, std = self.normalization
        return (x - mean) / std

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
        builder = self.model_config.get("cnn_builder")
        if builder != "cnn":
            raise ValueError(f"`cnn_builder={builder!r}` has no PyTorch module here")
        module = SmallCnn(int(self.model_config.get("num_classes") or 10))
        module.load_state_dict(self.state_dict())
        return module.eval()
