"""The main-loop modules in real runs: representation matching, noise-adversarial training
(regression and classification heads) and the random readout reset; bad module options
fail before anything is written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import safetensors_io
import torch

from bias_transfer_rs.model import build
from conftest import TINY, make_tiny_dataset, run_main, write_recipe

DB = "bias_transfer_2026_01_01_tiny.sqlite"


def run_tiny(tmp_path: Path, work_dir: Path, replace: dict[str, str]):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"), replace)
    return run_main(["--recipe", TINY, "--experiment", "tiny"], work_dir, recipes)


def stored(work_dir: Path) -> dict[str, dict]:
    with sqlite3.connect(work_dir / "db" / DB) as con:
        con.row_factory = sqlite3.Row
        rows = {r["comment"].split(".")[-1]: dict(r)
                for r in con.execute("SELECT * FROM trained_model")}
    for row in rows.values():
        row["train_stats"], row["final"] = json.loads(row["output"])
        path = work_dir / "artifacts" / DB.removesuffix(".sqlite") / \
            row["weights_uri"].removeprefix("local:")
        row["weights"] = safetensors_io.load(path)
    return rows


@pytest.mark.parametrize("criterion", ["cosine", "mse"])
def test_representation_matching_adds_its_loss(tmp_path: Path, work_dir: Path, criterion: str):
    proc = run_tiny(tmp_path, work_dir, {'comment="Noisy", num_epochs=2': (
        f'comment="Noisy", num_epochs=2, representation_matching={{"criterion": '
        f'"{criterion}", "lambda": 2.0, "second_noise_std": {{0.3: 1.0}}}}')})
    assert proc.returncode == 0, proc.stderr
    rows = stored(work_dir)
    for epoch in rows["Noisy"]["train_stats"]:
        assert epoch["train_module_loss"] > 0 and epoch["dev_module_loss"] > 0
    assert rows["Noisy"]["score"] > 80.0
    # The transfer stage does not match representations.
    assert all(e["train_module_loss"] == 0 for e in rows["Transfer"]["train_stats"])


def test_matching_only_clean_samples_against_clean_views_costs_nothing(tmp_path: Path,
                                                                       work_dir: Path):
    proc = run_tiny(tmp_path, work_dir, {'comment="Noisy", num_epochs=2': (
        'comment="Noisy", num_epochs=2, representation_matching={"criterion": "mse", '
        '"only_for_clean": True}')})
    assert proc.returncode == 0, proc.stderr
    for epoch in stored(work_dir)["Noisy"]["train_stats"]:
        assert epoch["train_module_loss"] == 0.0 and epoch["dev_module_loss"] == 0.0


@pytest.mark.parametrize("flag", ["noise_adv_regression", "noise_adv_classification"])
def test_noise_adversarial_head_is_trained_and_stored(tmp_path: Path, work_dir: Path,
                                                      flag: str):
    proc = run_tiny(tmp_path, work_dir, {
        'cnn_builder="cnn")': f'cnn_builder="cnn", {flag}=True)',
        'comment="Noisy", num_epochs=2': 'comment="Noisy", num_epochs=2, '
                                         'noise_adv_loss_factor=0.5, noise_adv_gamma=5.0'})
    assert proc.returncode == 0, proc.stderr
    rows = stored(work_dir)
    noisy = rows["Noisy"]
    assert all(e["train_module_loss"] > 0 for e in noisy["train_stats"])
    weights = noisy["weights"]
    assert tuple(weights["noise_readout.weight"].shape) == (1, 64 * 7 * 7)
    # The stored state dict loads strictly into the PyTorch module of the same config.
    module = build({"cnn_builder": "cnn", "dataset_cls": "FashionMNIST", "num_classes": 10,
                    "input_size": 28, flag: True})
    module.load_state_dict(weights, strict=True)
    assert noisy["score"] > 80.0


def test_readout_reset_after_every_batch_leaves_an_untrained_readout(tmp_path: Path,
                                                                     work_dir: Path):
    proc = run_tiny(tmp_path, work_dir, {'comment="Noisy", num_epochs=2': (
        'comment="Noisy", num_epochs=2, reset_linear_frequency={"batch": 1}')})
    assert proc.returncode == 0, proc.stderr
    noisy = stored(work_dir)["Noisy"]
    # The readout is re-drawn after each step, so every evaluation sees a random readout:
    # near chance on 10 balanced classes, where the same run without resets passes 90%.
    assert all(e["dev_acc"] < 40.0 for e in noisy["train_stats"])
    assert noisy["score"] < 40.0
    bound = 1 / (64 * 7 * 7) ** 0.5
    assert float(noisy["weights"]["readout.weight"].abs().max()) <= bound


def test_readout_reset_every_epoch_is_reproducible(tmp_path: Path):
    digests = []
    for run in ("a", "b"):
        work = tmp_path / f"work-{run}"
        proc = run_tiny(tmp_path / run, work, {'comment="Noisy", num_epochs=2': (
            'comment="Noisy", num_epochs=2, reset_linear_frequency={"epoch": 1}')})
        assert proc.returncode == 0, proc.stderr
        digests.append({c: r["weights_sha256"] for c, r in stored(work).items()})
    assert digests[0] == digests[1]


@pytest.mark.parametrize("replace, message", [
    ({'comment="Noisy", num_epochs=2': 'comment="Noisy", num_epochs=2, '
      'representation_matching={"criterion": "l1"}'},
     "`representation_matching.criterion` `l1` is unknown; valid: `cosine`, `mse`"),
    ({'comment="Noisy", num_epochs=2': 'comment="Noisy", num_epochs=2, '
      'representation_matching={"lamda": 1.0}'}, "`representation_matching` key `lamda` is "
                                                 "unknown"),
    ({'comment="Noisy", num_epochs=2': 'comment="Noisy", num_epochs=2, '
      'reset_linear_frequency={"batch": 0}'}, "`reset_linear_frequency.batch` must be at "
                                              "least 1"),
    ({'cnn_builder="cnn")': 'cnn_builder="cnn", noise_adv_regression=True, '
      'noise_adv_classification=True)'}, "set `noise_adv_classification` or "
                                         "`noise_adv_regression`, not both"),
    ({'comment="Noisy", num_epochs=2': 'comment="Noisy", num_epochs=2, '
      'noise_adv_gamma=-1.0'}, "`noise_adv_gamma=-1` is invalid; it must be a finite number"),
    ({'comment="Noisy", num_epochs=2': 'comment="Noisy", num_epochs=2, '
      'representation_matching={"second_noise_std": {0.3: 2.0}}'},
     "trainer config: `representation_matching`: `noise_std`: fractions sum to 2"),
    ({'cnn_builder="cnn")': 'cnn_builder="resnet", type=18.0)'},
     "model config: option `type`: expected a string"),
])
def test_bad_module_options_fail_before_anything_is_written(tmp_path: Path, work_dir: Path,
                                                            replace: dict, message: str):
    proc = run_tiny(tmp_path, work_dir, replace)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (work_dir / "db").exists()


def test_torch_module_has_no_noise_head_without_the_flags():
    config = {"cnn_builder": "cnn", "dataset_cls": "FashionMNIST", "input_size": 28}
    assert not hasattr(build(config), "noise_readout")
    head = build({**config, "noise_adv_regression": True}).noise_readout
    assert isinstance(head, torch.nn.Linear) and head.in_features == 64 * 7 * 7
