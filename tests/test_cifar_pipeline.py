"""Runs on CIFAR-format data with augmentation, normalisation and corrupted test sets in
the CIFAR-10-C layout (`c_test_acc` and `c_test_loss` by corruption and severity), and on a
small TinyImageNet folder."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bias_transfer_rs
from conftest import RECIPES, TINY, run_main, write_cifar, write_recipe, write_tiny_imagenet

CIFAR_RECIPE = {
    'dataset_cls="FashionMNIST"': 'dataset_cls="CIFAR10"',
    "input_size=28": "input_size=32, add_corrupted_test=True",
    "apply_data_augmentation=False": "apply_data_augmentation=True",
    "apply_data_normalization=False": "apply_data_normalization=True",
}


def write_corrupted(root: Path, test_images: np.ndarray, test_labels: np.ndarray) -> None:
    """CIFAR-10-C: `identity` repeats the clean test set at every severity, `blank` is
    black; channels last, five severities stacked."""
    folder = root / "CIFAR-10-C"
    folder.mkdir()
    hwc = np.tile(test_images.transpose(0, 2, 3, 1), (5, 1, 1, 1))
    np.save(folder / "identity.npy", hwc)
    np.save(folder / "blank.npy", np.zeros_like(hwc))
    np.save(folder / "labels.npy", np.tile(test_labels, 5).astype(np.int64))


def test_corrupted_test_sets_are_evaluated_by_severity(tmp_path: Path, work_dir: Path):
    data = tmp_path / "data"
    _, (test_images, test_labels) = write_cifar(data, n_train=300, n_test=60)
    write_corrupted(data, test_images, test_labels)
    recipes = tmp_path / "recipes"
    write_recipe(recipes, data, CIFAR_RECIPE)
    proc = run_main(["--recipe", TINY, "--experiment", "tiny"], work_dir, recipes)
    assert proc.returncode == 0, proc.stderr
    assert "corrupted test `identity`: acc" in proc.stderr

    with sqlite3.connect(work_dir / "db" / "bias_transfer_2026_01_01_tiny.sqlite") as con:
        outputs = [json.loads(r[0]) for r in con.execute("SELECT output FROM trained_model")]
    assert len(outputs) == 2
    for _, final in outputs:
        assert set(final["c_test_acc"]) == set(final["c_test_loss"]) == {"identity", "blank"}
        for name in ("identity", "blank"):
            assert list(final["c_test_acc"][name]) == ["1", "2", "3", "4", "5"]
        # The identity corruption is the test set itself, seen in the same batches.
        for severity in "12345":
            assert final["c_test_acc"]["identity"][severity] == final["test_acc"]
            assert final["c_test_loss"]["identity"][severity] == pytest.approx(
                final["test_loss"], abs=1e-6)
        # One black image for all: the model gives it one class, so the accuracy is that
        # class's share of the labels, the same at every severity.
        shares = {100.0 * np.mean(test_labels == k) for k in range(10)}
        (blank,) = set(final["c_test_acc"]["blank"].values())
        assert min(abs(blank - share) for share in shares) < 1e-9


def test_missing_corrupted_sets_fail_before_training(tmp_path: Path, work_dir: Path):
    data = tmp_path / "data"
    write_cifar(data, n_train=50, n_test=10)
    recipes = tmp_path / "recipes"
    write_recipe(recipes, data, CIFAR_RECIPE)
    proc = run_main(["--recipe", TINY, "--experiment", "tiny"], work_dir, recipes)
    assert proc.returncode == 2
    assert f"dataset `CIFAR-10-C`: files not found; looked in `{data}/CIFAR-10-C`" in proc.stderr
    assert "or set `add_corrupted_test=False`" in proc.stderr
    assert not (work_dir / "db").exists()


def test_tiny_imagenet_smoke_run_with_a_resnet(tmp_path: Path, work_dir: Path):
    data = tmp_path / "data"
    write_tiny_imagenet(data, classes=4, per_class=10, n_val=8)
    recipes = tmp_path / "recipes"
    write_recipe(recipes, data, {
        'dataset_cls="FashionMNIST"': 'dataset_cls="TinyImageNet"',
        "input_size=28": "input_size=64",
        'cnn_builder="cnn")': 'cnn_builder="resnet", type="18")',
        "apply_data_augmentation=False": "apply_data_augmentation=True",
        "apply_data_normalization=False": "apply_data_normalization=True",
    })
    proc = run_main(["--recipe", TINY, "--experiment", "tiny", "--smoke"], work_dir, recipes)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(work_dir / "db" / "bias_transfer_2026_01_01_tiny.sqlite") as con:
        (model,) = con.execute("SELECT config FROM model").fetchone()
        scores = [r[0] for r in con.execute("SELECT score FROM trained_model")]
    config = bias_transfer_rs.decode(model)
    assert (config["num_classes"], config["input_size"], config["core_stride"]) == (200, 64, 2)
    assert len(scores) == 2 and all(0.0 <= s <= 100.0 for s in scores)


VGG_RECIPE = {
    'dataset_cls="FashionMNIST"': 'dataset_cls="CIFAR10"',
    "input_size=28": "input_size=32",
    'cnn_builder="cnn")': 'cnn_builder="vgg", type="11_bn")',
    "apply_data_augmentation=False": "apply_data_augmentation=True",
    "apply_data_normalization=False": "apply_data_normalization=True",
    'comment="Noisy", num_epochs=2': 'comment="Noisy", num_epochs=4',
}


def weights(work: Path) -> dict[str, str]:
    with sqlite3.connect(work / "db" / "bias_transfer_2026_01_01_tiny.sqlite") as con:
        return dict(con.execute("SELECT comment, weights_sha256 FROM trained_model"))


def test_batch_norm_dropout_and_augmentation_repeat_exactly_and_resume(tmp_path: Path):
    """A VGG with batch norm and dropout, trained with augmentation and noise: two runs give
    the same weights, and so does a run stopped after its second epoch and resumed."""
    data = tmp_path / "data"
    write_cifar(data, n_train=300, n_test=30)
    recipes = tmp_path / "recipes"
    write_recipe(recipes, data, VGG_RECIPE)
    args = ["--recipe", TINY, "--experiment", "tiny"]
    runs = []
    for name in ("a", "b"):
        proc = run_main(args, tmp_path / name, recipes)
        assert proc.returncode == 0, proc.stderr
        runs.append(weights(tmp_path / name))
    assert runs[0] == runs[1] and len(runs[0]) == 2

    work = tmp_path / "stopped"
    env = {**os.environ, "BT_WORK_DIR": str(work), "BT_LOG": "info"}
    proc = subprocess.Popen(
        [sys.executable, str(RECIPES / "main.py"), "--recipes-dir", str(recipes), "--quiet",
         "--dev-mode", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Noisy -> Transfer 1/2] epoch 2/4" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    resumed = run_main(args, work, recipes)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resuming after epoch [23]/4 from its checkpoint", resumed.stderr)
    assert weights(work) == runs[0]
