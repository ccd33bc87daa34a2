"""The training-throughput measurement behind `benchmarks/training.py`: its checks, and the
benchmark runner itself on a small dataset (the figures are not asserted: a benchmark
reports them, a test cannot hold a machine to them)."""

from __future__ import annotations

import math
import os
import re
import shutil
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
    with pytest.raises(_core.TrainingError, match="^throughput: `steps` must be at least 1$"):
        _core.train_throughput(dataset, MODEL, TRAINER, ".", 0, 0, 0)
    # 600 images, 540 for training: 8 full batches of 64.
    with pytest.raises(_core.TrainingError, match="^throughput: the training split holds 8 "
                                                  "full batches of 64, fewer than the 9 asked "
                                                  "for$"):
        _core.train_throughput(dataset, MODEL, TRAINER, ".", 0, 1, 9)
    with pytest.raises(_core.TrainingError, match="`num_classes=100`"):
        _core.train_throughput(dataset, {**MODEL, "num_classes": 100}, TRAINER, ".", 0, 1, 1)
    with pytest.raises(_core.DataError, match="FashionMNIST"):
        _core.train_throughput({**DATASET, "data_dir": str(data_dir / "absent")}, MODEL,
                               TRAINER, ".", 0, 1, 1)
    with pytest.raises(TypeError, match="^`trainer_config` must be a dict, not NoneType$"):
        _core.train_throughput(dataset, MODEL, None, ".", 0, 1, 1)
    with pytest.raises(TypeError, match="^`dataset_config` must be a dict, not list$"):
        _core.train_throughput([dataset], MODEL, TRAINER, ".", 0, 1, 1)


def run_benchmark(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training.py"), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("args", "message"), [
    # Checked by the runner before any run is spawned.
    (["--fashion-dir", "/absent"], "small CNN, Fashion-MNIST: dataset `FashionMNIST`"),
    (["--steps", "9"], "small CNN, Fashion-MNIST: the training split holds 4 full batches "
                       "of 128, fewer than the 9 asked for"),
    (["--steps", "0"], "argument --steps: must be at least 1, not 0"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0, not -1"),
    (["--repeats", "0"], "argument --repeats: must be at least 1, not 0"),
    (["--json", "/absent/runs.json"], "--json: no folder `/absent`"),
])
def test_benchmark_runner_names_bad_input(data_dir: Path, args: list[str], message: str):
    out = run_benchmark("--models", "cnn", "--steps", "2", "--warmup", "1",
                        "--fashion-dir", str(data_dir), *args)
    assert out.returncode != 0
    assert message in out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr


def test_benchmark_runner_shows_a_runs_own_error(data_dir: Path, tmp_path: Path):
    # The data pass the runner's check, then vanish: the first run's own error is shown.
    shutil.copytree(data_dir, tmp_path / "idx")
    script = tmp_path / "vanishing_data.py"
    script.write_text(
        "import shutil, sys\n"
        "import training\n"
        "check = training.check\n"
        "training.check = lambda work: (check(work), shutil.rmtree(sys.argv[-1]))\n"
        "training.main()\n")
    out = subprocess.run([sys.executable, str(script), "--models", "cnn", "--steps", "2",
                          "--warmup", "1", "--repeats", "1", "--fashion-dir",
                          str(tmp_path / "idx")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("small CNN, Fashion-MNIST, reference: ")
    assert "DataError: dataset `FashionMNIST`: files not found" in last


def test_benchmark_runner_prints_every_figure_and_ratio(data_dir: Path):
    run = run_benchmark("--models", "cnn", "--steps", "2", "--warmup", "1", "--repeats", "1",
                        "--fashion-dir", str(data_dir))
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for contender in ("reference", "ours", "floor, ours", "floor, torch",
                      "floor, torch tuned"):
        assert re.search(rf"  {re.escape(contender)} .* images/s", out), contender
    rows = [line for line in out.splitlines() if line.startswith("| small CNN")]
    assert [row.split(" | ")[1] for row in rows] == ["none", "crop, flip, rotation"]
    for row in rows:
        figures = [float(cell) for cell in row.strip("| ").split(" | ")[2:]]
        assert len(figures) == 5 and all(f > 0 for f in figures)
        reference, ours, floor, ours_vs_reference, floor_vs_ours = figures
        # The table's figures are rounded to whole images/s, its ratios computed before.
        assert ours_vs_reference == pytest.approx(ours / reference, rel=0.01, abs=0.01)
        assert floor_vs_ours == pytest.approx(floor / ours, rel=0.01, abs=0.002)
