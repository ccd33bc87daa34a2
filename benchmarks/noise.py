"""Noise augmentation: bias_transfer_rs against the original per-level PyTorch loop and two
floors (a memory copy of the batch; numpy drawing the same number of Gaussian samples on
one thread), side by side in one run.

    python benchmarks/noise.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

import bias_transfer_rs

SEED_NOISE_STD = {0.08: 0.1, 0.12: 0.1, 0.18: 0.1, 0.26: 0.1, 0.38: 0.1, -1: 0.5}
SHAPES = [(128, 3, 32, 32), (256, 1, 28, 28)]


def reference_loop(x: torch.Tensor, noise_std: dict, generator: torch.Generator):
    """The original trainer's per-level loop, on a copy (the original worked in place)."""
    x = x.clone()
    n = x.shape[0]
    applied = torch.zeros(n)
    perm = torch.randperm(n, generator=generator)
    start = 0
    for level, fraction in noise_std.items():
        end = start + int(fraction * n)
        idx = perm[start:end]
        if level not in (-1, 0):
            x[idx] += torch.randn(x[idx].shape, generator=generator) * level
            applied[idx] = level
        start = end
    return torch.clamp(x, 0, 1), applied


def median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def noisy_count(shape: tuple[int, ...]) -> int:
    n, per_sample = shape[0], int(np.prod(shape[1:]))
    noisy = sum(int(f * n) for level, f in SEED_NOISE_STD.items() if level not in (-1, 0))
    return noisy * per_sample


def bench(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x_np = rng.random(shape, dtype=np.float32)
    x_t = torch.from_numpy(x_np.copy())
    gen = torch.Generator().manual_seed(0)
    draws = noisy_count(shape)
    seeds = iter(range(10**9))
    return {
        "reference (torch loop)": median_ms(
            lambda: reference_loop(x_t, SEED_NOISE_STD, gen), repeats),
        "ours, numpy": median_ms(
            lambda: bias_transfer_rs.apply_noise(x_np, std=SEED_NOISE_STD, seed=next(seeds)),
            repeats),
        "ours, torch": median_ms(
            lambda: bias_transfer_rs.apply_noise(x_t, std=SEED_NOISE_STD, seed=next(seeds)),
            repeats),
        "floor: memory copy": median_ms(lambda: x_np.copy(), repeats),
        f"floor: numpy {draws} normals, 1 thread": median_ms(
            lambda: rng.standard_normal(draws, dtype=np.float32), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"bias_transfer_rs {bias_transfer_rs.__version__}")
    print(f"noise_std = {SEED_NOISE_STD}, median of {args.repeats} runs\n")
    for shape in SHAPES:
        times = bench(shape, args.repeats)
        ref = times["reference (torch loop)"]
        ours = times["ours, numpy"]
        print(f"batch {'x'.join(map(str, shape))}")
        for name, ms in times.items():
            print(f"  {name:<40} {ms:8.3f} ms   reference/this {ref / ms:6.2f}   "
                  f"this/ours {ms / ours:6.2f}")
        print()


if __name__ == "__main__":
    main()
