"""Noise augmentation on numpy arrays and torch tensors, by the Rust engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bias_transfer_rs._core import ConfigError, apply_noise_array

Spec = Mapping[Any, float] | float


def _spec(value: Spec) -> Mapping[Any, float]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {value: 1.0}
    raise ConfigError(f"apply_noise: a noise spec is a dict `{{level: fraction}}` or one level, "
                      f"got `{value!r}`")


def apply_noise(
    x: np.ndarray | torch.Tensor,
    std: Spec | None = None,
    snr: Spec | None = None,
    *,
    seed: int = 0,
    clamp: bool = True,
    mean: Sequence[float] | None = None,
    norm_std: Sequence[float] | None = None,
    channels_last: bool = False,
) -> tuple[Any, Any]:
    """Add Gaussian noise to a batch; return `(noisy, applied_std)` of the input's kind.

    `std` (or `snr`) is a spec `{level: fraction}` as in `TrainerConfig.noise_std`, or a
    single level for the whole batch; `-1` or `0` marks the clean share and a tuple key
    `(a, b)` draws the level per sample. Noise is in pixel units: for normalised batches
    give the per-channel `mean` and `norm_std`; uint8 batches are raw pixels in [0, 255].
    With `clamp`, noisy samples are clamped per channel to the image of pixel range [0, 1].
    The input is never modified; the same `seed` gives the same output.
    """
    if (std is None) == (snr is None):
        raise ConfigError("apply_noise: give exactly one of `std` and `snr`")
    spec, mode = (_spec(std), "std") if std is not None else (_spec(snr), "snr")
    mean = None if mean is None else [float(m) for m in mean]
    norm_std = None if norm_std is None else [float(s) for s in norm_std]
    if isinstance(x, torch.Tensor):
        array = x.detach().cpu().numpy()
        noisy, applied = apply_noise_array(array, spec, mode, seed, clamp, mean, norm_std,
                                           channels_last)
        return torch.from_numpy(noisy).to(x.device), torch.from_numpy(applied).to(x.device)
    return apply_noise_array(np.asarray(x), spec, mode, seed, clamp, mean, norm_std,
                             channels_last)
