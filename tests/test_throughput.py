"""The training-throughput measurement behind `benchmarks/training.py`: its checks, and the
benchmark runner itself on a small dataset (the figures are not asserted: a benchmark
reports them, a test cannot hold a machine to them)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (loads libtorch before the extension)

from bias_transfer_rs import _core
from conftest import ROOT, make_tiny_dataset

DATASET = {"dataset_cls": "FashionMNIST", "input_size": 28, "batch_size": 64,
           "apply_data_augmentation": True}
MODEL = {"cnn_builder": "cnn", "dataset_cls": "FashionMNIST", "input_size": 28,
         "num_classes": 10}
TRAINER = {"optimizer": "Adam", "lr": 1e-3, "num_epochs": 2,
           "noise_std": {0.1: 0.5, -1: 0.5}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("idx"))


@pytest.mark.parametrize("floor", [False, True])
def test_throughput_runs_the_trainer_or_the_floor(data_dir: Path, floor: bool):
    rate = _core.train_throughput({**DATASET, "data_dir": str(data_dir)}, MODEL, TRAINER, ".",
                                  0, 1, 3, floor=floor)
    assert math.isfinite(rate) and rate > 0


def test_throughput_checks_its_input(data_dir: Path):
    dataset = {**DATASET, "data_dir": str(data_dir)}
    with pytest.raises(_core.TrainingError, match="`steps` must be at least 1"):
        _core.train_throughput(dataset, MODEL, TRAINER, ".", 0, 0, 0)
    # 600 images, 540 for training: 8 full batches of 64.
    with pytest.raises(_core.TrainingError, match="holds 8 full batches of 64, fewer than "
                                                  "the 9 asked for"):
        _core.train_throughput(dataset, MODEL, TRAINER, ".", 0, 1, 9)
    with pytest.raises(_core.TrainingError, match="`num_classes=100`"):
        _core.train_throughput(dataset, {**MODEL, "num_classes": 100}, TRAINER, ".", 0, 1, 1)
    with pytest.raises(_core.DataError, match="FashionMNIST"):
        _core.train_throughput({**DATASET, "data_dir": str(data_dir / "absent")}, MODEL,
                               TRAINER, ".", 0, 1, 1)


def test_benchmark_runner_prints_every_figure_and_ratio(data_dir: Path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "training.py"), "--models", "cnn",
         "--steps", "2", "--warmup", "1", "--repeats", "1", "--fashion-dir", str(data_dir)],
        capture_output=True, text=True, check=True, timeout=600).stdout
    for contender in ("reference", "ours", "floor, ours", "floor, torch",
                      "floor, torch tuned"):
        assert re.search(rf"  {re.escape(contender)} .* images/s", out), contender
    rows = [line for line in out.splitlines() if line.startswith("| small CNN")]
    assert [row.split(" | ")[1] for row in rows] == ["none", "crop, flip, rotation"]
    for row in rows:
        figures = [float(cell) for cell in row.strip("| ").split(" | ")[2:]]
        assert len(figures) == 5 and all(f > 0 for f in figures)
        reference, ours, floor, ours_vs_reference, floor_vs_ours = figures
        assert ours_vs_reference == pytest.approx(ours / reference, abs=0.01)
        assert floor_vs_ours == pytest.approx(floor / ours, abs=0.002)
