"""Noise augmentation from Python: exact shares, statistics, determinism, kinds, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bias_transfer_rs import ConfigError, apply_noise

SEED_DICT = {0.08: 0.1, 0.12: 0.1, 0.18: 0.1, 0.26: 0.1, 0.38: 0.1, -1: 0.5}


@pytest.mark.parametrize("n", [1000, 128, 37, 9])
def test_shares_follow_the_floor_rule(n: int):
    x = np.full((n, 1, 4, 4), 0.5, np.float32)
    noisy, applied = apply_noise(x, std=SEED_DICT, seed=3)
    for level in (0.08, 0.12, 0.18, 0.26, 0.38):
        assert np.sum(applied == np.float32(level)) == int(0.1 * n)
    clean = applied == 0
    assert clean.sum() == n - 5 * int(0.1 * n)
    assert np.array_equal(noisy[clean], x[clean])


def test_empirical_std_matches_each_level_within_one_percent():
    x = np.full((2000, 3, 16, 16), 0.5, np.float32)
    noisy, applied = apply_noise(x, std=SEED_DICT, seed=1, clamp=False)
    added = (noisy - x).reshape(len(x), -1)
    for level in (0.08, 0.12, 0.18, 0.26, 0.38):
        rows = added[applied == np.float32(level)]
        assert rows.size > 100_000
        assert abs(rows.std() / level - 1) < 0.01, level
        assert abs(rows.mean()) < 0.01 * level


def test_snr_gives_the_requested_ratio():
    rng = np.random.default_rng(0)
    x = rng.random((400, 1, 28, 28), dtype=np.float32)
    noisy, applied = apply_noise(x, snr={2.0: 0.5, 0.5: 0.5}, seed=4, clamp=False)
    power = (x.astype(np.float64) ** 2).reshape(len(x), -1).mean(axis=1)
    levels = power / applied
    assert np.allclose(np.sort(np.unique(np.round(levels, 4))), [0.5, 2.0])
    for level in (0.5, 2.0):
        rows = np.isclose(levels, level, rtol=1e-4)
        added = (noisy - x)[rows].reshape(rows.sum(), -1)
        assert abs(added.std(axis=1).mean() / applied[rows].mean() - 1) < 0.01


def test_fixed_seed_gives_identical_output_and_input_is_untouched():
    x = np.random.default_rng(1).random((64, 3, 8, 8), dtype=np.float32)
    before = x.copy()
    a, sa = apply_noise(x, std=SEED_DICT, seed=42)
    b, sb = apply_noise(x, std=SEED_DICT, seed=42)
    c, _ = apply_noise(x, std=SEED_DICT, seed=43)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    assert not np.array_equal(a, c)
    assert np.array_equal(x, before)


def test_kinds_are_kept():
    x = np.random.default_rng(2).random((8, 3, 4, 4))
    noisy, applied = apply_noise(x, std=0.1, seed=0)
    assert noisy.dtype == np.float64 and applied.dtype == np.float32
    t = torch.from_numpy(x.astype(np.float32))
    noisy_t, applied_t = apply_noise(t, std=0.1, seed=0)
    assert isinstance(noisy_t, torch.Tensor) and isinstance(applied_t, torch.Tensor)
    assert torch.equal(noisy_t, torch.from_numpy(apply_noise(t.numpy(), std=0.1, seed=0)[0]))
    pixels = np.full((4, 28, 28), 128, np.uint8)
    noisy_u8, _ = apply_noise(pixels, std=0.1, seed=0)
    assert noisy_u8.dtype == np.uint8
    assert abs((noisy_u8.astype(float) - 128).std() - 25.5) < 1.0


def test_channels_last_matches_channels_first():
    x = np.random.default_rng(3).random((16, 3, 5, 5), dtype=np.float32)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    first, sf = apply_noise(x, std=SEED_DICT, seed=9, mean=mean, norm_std=std)
    last, sl = apply_noise(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), std=SEED_DICT, seed=9,
                           mean=mean, norm_std=std, channels_last=True)
    assert np.array_equal(sf, sl)
    assert np.array_equal(first, last.transpose(0, 3, 1, 2))


def test_normalised_batches_clamp_per_channel():
    mean, std = np.array([0.2, 0.8]), np.array([0.5, 0.25])
    x = np.zeros((50, 2, 10, 10), np.float32)
    noisy, _ = apply_noise(x, std=1.0, seed=5, mean=mean, norm_std=std)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    for c in range(2):
        assert noisy[:, c].min() == pytest.approx(lo[c]) and noisy[:, c].max() == pytest.approx(
            hi[c])


@pytest.mark.parametrize("kwargs,message", [
    ({"std": {0.1: 0.5, -1: 0.4}}, "`noise_std`: fractions sum to 0.9, not 1"),
    ({"std": {-0.3: 1.0}}, "level `-0.3` must be non-negative"),
    ({"std": {0.1: float("nan")}}, "fraction `{\"$float\":\"nan\"}` of level `0.1` must be a"),
    ({"std": {}}, "`noise_std`: the spec is empty"),
    ({"std": 0.1, "snr": 2.0}, "give exactly one of `std` and `snr`"),
    ({}, "give exactly one of `std` and `snr`"),
    ({"std": "loud"}, "a noise spec is a dict"),
])
def test_bad_specs_raise_clear_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        apply_noise(np.zeros((4, 1, 2, 2), np.float32), **kwargs)
    assert message in str(info.value)


def test_unsupported_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="`int64` is not supported"):
        apply_noise(np.zeros((4, 4), np.int64), std=0.1)
    with pytest.raises(ConfigError, match="leading sample axis"):
        apply_noise(np.zeros(4, np.float32), std=0.1)
    with pytest.raises(ConfigError, match="`norm_std` has 2 entries for 3 channels"):
        apply_noise(np.zeros((2, 3, 2, 2), np.float32), std=0.1, norm_std=(1, 1))
