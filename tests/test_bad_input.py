"""Bad recipes and bad data: each gets an error naming the culprit before anything is
written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, make_tiny_dataset, run_main, write_idx, write_recipe


def run_tiny(tmp_path: Path, replace: dict[str, str] | None = None, data: Path | None = None,
             args: tuple[str, ...] = ()):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, data or make_tiny_dataset(tmp_path / "data"), replace)
    work = tmp_path / "work"
    return run_main(["--recipe", TINY, "--experiment", "tiny", *args], work, recipes), work


@pytest.mark.parametrize("replace,message", [
    ({'freeze=("core",)': 'freeze=("nope",)'},
     "`freeze` names `nope`, which the model lacks; valid: `core`, `readout`"),
    ({"num_epochs=2, lr=1e-3": "num_epochs=2, lr=-1.0"}, "`lr=-1` is invalid; it must be a"),
    ({"num_epochs=2, lr=1e-3": "num_epochs=2, lr=float('nan')"}, "`lr=NaN` is invalid"),
    ({"num_epochs=2": "num_epochs=0"}, "`num_epochs=0` trains nothing"),
    ({'cnn_builder="cnn"': 'cnn_builder="cnn", num_classes=5'},
     "`num_classes=5`, but `FashionMNIST` has 10 classes"),
    ({"batch_size=32,": "batch_size=32, valid_size=0.0,"},
     "`valid_size=0` of 600 training images leaves an empty validation split"),
    ({"noise_std={{0.2: 0.5, -1: 0.5}}".replace("{{", "{").replace("}}", "}"):
      "noise_std={(0.3, 0.1): 0.5, -1: 0.5}"}, "range `[0.3,0.1]` must have 0 <= a <= b"),
    ({"seed=7)\nsecond": "seed=7.5)\nsecond"}, "chain `Noisy -> Transfer` stage 0: seed `7.5`"),
    ({"batch_size=32,": "batch_size=2**70,"}, "integer `1180591620717411303424` does not fit"),
    ({'cnn_builder="cnn"': 'cnn_builder="cnn", input_size=32'},
     "`input_size=32`, but `FashionMNIST` images are 28 px"),
    ({'cnn_builder="cnn"': 'cnn_builder="vgg", type="11"'},
     "a VGG pools five times and takes a multiple of 32 px"),
    ({"apply_data_normalization=False)": "apply_data_normalization=False, "
      "add_corrupted_test=True)"}, "`FashionMNIST` has no corrupted test sets here"),
])
def test_bad_configs_fail_before_anything_is_written(tmp_path, replace, message):
    proc, work = run_tiny(tmp_path, replace)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (work / "db").exists() and not (work / "artifacts").exists()


def test_every_problem_of_a_stage_is_listed(tmp_path):
    proc, _ = run_tiny(tmp_path, {"num_epochs=2, lr=1e-3": "num_epochs=2, lr=-1.0",
                                   'cnn_builder="cnn"': 'cnn_builder="capsule"'})
    assert proc.returncode == 2
    assert "stage 0 (`Noisy`): model config: `cnn_builder` `capsule` is unknown" in proc.stderr
    assert "; trainer config: `lr=-1` is invalid" in proc.stderr


def corrupt(folder: Path, kind: str) -> None:
    images = folder / "train-images-idx3-ubyte.gz"
    if kind == "truncated":
        images.write_bytes(images.read_bytes()[:200])
    elif kind == "small images":
        write_idx(images, np.zeros((600, 10, 10)), compress=True)
    elif kind == "bad label":
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(200, 12), compress=True)
    elif kind == "count mismatch":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(150), compress=True)
    elif kind == "missing file":
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    elif kind == "no images":
        write_idx(images, np.zeros((0, 28, 28)), compress=True)
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(0), compress=True)


@pytest.mark.parametrize("kind,message", [
    ("truncated", "train-images-idx3-ubyte.gz`: "),
    ("small images", "600 images of 1x10x10, expected 1x28x28 images"),
    ("bad label", "t10k-labels-idx1-ubyte.gz`: corrupt: label 12 is not a class: there are "
                  "10, labelled 0 to 9"),
    ("count mismatch", "150 labels for 600 images"),
    ("missing file", "lacks `t10k-labels-idx1-ubyte[.gz]`"),
    ("no images", "0 images of 1x28x28, expected 1x28x28"),
])
def test_bad_data_fails_before_anything_is_written_and_shows_in_a_dry_run(tmp_path, kind,
                                                                           message):
    data = make_tiny_dataset(tmp_path / "data")
    corrupt(data, kind)
    proc, work = run_tiny(tmp_path, data=data)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (work / "db").exists()
    dry, _ = run_tiny(tmp_path / "again", data=data, args=("--dry-run",))
    assert dry.returncode == 0 and message in dry.stdout


def test_recipe_problems(tmp_path):
    proc = run_main(["--recipe", TINY], tmp_path / "work", tmp_path / "nowhere")
    assert proc.returncode == 2 and "recipes directory" in proc.stderr
    proc, _ = run_tiny(tmp_path / "empty", {
        'Description("Noisy -> Transfer", 7): TransferExperiment([first, second]),': "",
        'Description("Noisy", 7): first,': ""})
    assert proc.returncode == 2
    assert "`transfer_experiments` is empty" in proc.stderr
