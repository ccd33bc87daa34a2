"""The notebook API on a small trained schema: DataFrames and their filters, curves, noise
sweeps, plots, loaded models against PyTorch, and the example notebook executed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import safetensors_io
import torch
from nbclient import NotebookClient

import bias_transfer_rs
from conftest import RECIPES, TINY, make_tiny_dataset, run_main, write_recipe

SCHEMA = "bias_transfer_2026_01_01_tiny"
SECOND_SEED = ('Description("Noisy", 7): first,',
               'Description("Noisy", 7): first,\n'
               '    Description("Noisy", 8): Experiment(data, net, first.trainer, seed=8),')


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A schema with three distinct stages: `Noisy` (seeds 7 and 8) and its transfer."""
    root = tmp_path_factory.mktemp("notebook")
    recipes = root / "recipes"
    write_recipe(recipes, make_tiny_dataset(root / "data"), dict([SECOND_SEED]))
    work = root / "work"
    proc = run_main(["--recipe", TINY, "--experiment", "tiny"], work, recipes)
    assert proc.returncode == 0, proc.stderr
    return work


def stored_rows(work: Path) -> dict[str, dict]:
    with sqlite3.connect(work / "db" / f"{SCHEMA}.sqlite") as con:
        con.row_factory = sqlite3.Row
        return {r["key"]: dict(r) for r in con.execute("SELECT * FROM trained_model")}


def test_one_row_per_chain_stage_with_configs_as_columns(trained: Path):
    frame = bias_transfer_rs.trained_models(SCHEMA, trained)
    assert isinstance(frame, pd.DataFrame)
    assert sorted(zip(frame.chain, frame.stage, frame.seed, frame.comment, strict=True)) == [
        ("Noisy", 0, 7, "Noisy"), ("Noisy", 0, 8, "Noisy"),
        ("Noisy -> Transfer", 0, 7, "Noisy"), ("Noisy -> Transfer", 1, 7, "Transfer")]
    assert list(frame.columns[:11]) == ["chain", "stage", "comment", "seed", "key",
                                        "parent_key", "score", "test_acc", "test_loss",
                                        "dev_acc", "epoch"]
    assert {"dataset.fn", "dataset.hash", "dataset.batch_size", "model.cnn_builder",
            "trainer.num_epochs", "trainer.noise_std", "trainer.freeze", "commits",
            "commit.bias_transfer_rs", "recipes_commit", "mode", "python", "torch",
            "bias_transfer_rs", "weights_uri", "weights_sha256"} <= set(frame.columns)
    rows = stored_rows(trained)
    for _, row in frame.iterrows():
        stored = rows[row.key]
        assert row.score == stored["score"] == row.test_acc
        assert row.weights_sha256 == stored["weights_sha256"]
        assert row["trainer.hash"] == stored["trainer_hash"]
        assert row["mode"] == "dev" and row.bias_transfer_rs == bias_transfer_rs.__version__
    noisy = frame[frame.comment == "Noisy"].iloc[0]
    # Dict keys keep their Python types: a float std and the int `-1` for the clean share.
    assert noisy["trainer.noise_std"] == {0.2: 0.5, -1: 0.5}
    assert noisy["trainer.num_epochs"] == 2 and noisy["dataset.batch_size"] == 32
    transfer = frame[frame.comment == "Transfer"].iloc[0]
    assert transfer.parent_key == frame[(frame.chain == "Noisy -> Transfer")
                                        & (frame.stage == 0)].key.iloc[0]


def test_filters(trained: Path):
    results = bias_transfer_rs.connect(SCHEMA, trained)
    assert len(results.trained_models(seed=8)) == 1
    assert len(results.trained_models(chain="Noisy", seed=7)) == 1
    assert list(results.trained_models(trainer__num_epochs=1).comment) == ["Transfer"]
    assert len(results.trained_models(num_epochs=lambda n: n > 1)) == 3
    assert list(results.trained_models(**{"trainer.freeze": ["core"]}).comment) == ["Transfer"]
    assert len(results.trained_models(parent_key=None)) == 3
    assert len(results.trained_models(seed=99)) == 0
    with pytest.raises(ValueError, match=r"filter `dataset_cls` is in several configs "
                                         r"\(dataset.dataset_cls, model.dataset_cls\)"):
        results.trained_models(dataset_cls="FashionMNIST")
    with pytest.raises(ValueError, match=r"filter `num_epoch` names no column; did you mean "
                                         r"`trainer.num_epochs`"):
        results.trained_models(num_epoch=2)
    with pytest.raises(ValueError, match="commit `ab`: give at least 4 hex digits"):
        results.trained_models(commit="ab")
    # Dev-mode rows in a recipes folder outside git record no commit to match.
    assert len(results.trained_models(commit="abcd")) == 0


def test_curves_and_noise_sweep_match_the_stored_output(trained: Path):
    results = bias_transfer_rs.connect(SCHEMA, trained)
    rows = stored_rows(trained)
    curves = results.training_curves(seed=7)
    assert list(curves.columns[:6]) == ["chain", "stage", "comment", "seed", "key", "epoch"]
    assert len(curves) == 2 + 2 + 1  # Noisy twice (two chains), Transfer once
    for (_, key), group in curves.groupby(["chain", "key"]):
        train_stats = json.loads(rows[key]["output"])[0]
        assert list(group.epoch) == list(range(1, len(train_stats) + 1))
        assert list(group.dev_acc) == [s["dev_acc"] for s in train_stats]
        assert list(group.train_loss) == [s["train_loss"] for s in train_stats]

    sweep = results.noise_robustness()
    assert len(sweep) == 4 * 2
    assert set(sweep.kind) == {"noise_std"} and set(sweep.level) == {0.0, 0.5}
    for _, r in sweep.iterrows():
        final = json.loads(rows[r.key]["output"])[1]
        assert r.acc == final["dev_noise_acc"]["noise_std"][r.level_key]
        assert r.loss == final["dev_noise_loss"]["noise_std"][r.level_key]


def test_plots_are_written(trained: Path, tmp_path: Path):
    results = bias_transfer_rs.connect(SCHEMA, trained)
    fig = results.plot_noise_robustness()
    ax = fig.axes[0]
    # One line per chain stage; seeds 7 and 8 of `Noisy` make one line with a band.
    assert sorted(line.get_label() for line in ax.get_lines()) == [
        "Noisy -> Transfer [0: Noisy]", "Noisy -> Transfer [1: Transfer]", "Noisy [0: Noisy]"]
    assert len(ax.collections) == 1
    noisy = next(li for li in ax.get_lines() if li.get_label() == "Noisy [0: Noisy]")
    sweep = results.noise_robustness(chain="Noisy")
    expected = sweep.groupby("level").acc.mean()
    np.testing.assert_allclose(noisy.get_ydata(), expected.to_numpy())
    fig.savefig(tmp_path / "noise.png")
    curves = results.plot_training_curves("train_loss")
    curves.savefig(tmp_path / "curves.png")
    for name in ("noise.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="`accuracy` is not a recorded metric; recorded: "):
        results.plot_training_curves("accuracy")


def test_loaded_model_matches_pytorch_and_the_stored_weights(trained: Path):
    results = bias_transfer_rs.connect(SCHEMA, trained)
    frame = results.trained_models(comment="Transfer")
    key = frame.key.iloc[0]
    model = results.load_model(key[:8])
    assert model.key == key and model.input_shape == (1, 28, 28)
    assert model.model_config["cnn_builder"] == "cnn"
    assert model.normalization == ([0.0], [1.0])  # the recipe turns normalisation off

    path = trained / "artifacts" / SCHEMA / frame.weights_uri.iloc[0].removeprefix("local:")
    stored = safetensors_io.load(path)
    state = model.state_dict()
    assert list(state) == sorted(stored)
    for name, tensor in state.items():
        assert torch.equal(tensor, stored[name]), name

    images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    out = model(images)
    assert set(out) == {"logits", "core"}
    assert out["logits"].shape == (5, 10) and out["core"].shape == (5, 64 * 7 * 7)
    net = model.to_torch()
    assert isinstance(net, torch.nn.Module) and not net.training
    with torch.no_grad():
        reference = net(torch.from_numpy(images))
    torch.testing.assert_close(out["logits"], reference["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["core"], reference["core"], rtol=0, atol=1e-5)
    # Torch in, torch out; a batch of 2-D images gets its channel axis.
    same = model(torch.from_numpy(images[:, 0]).double())
    torch.testing.assert_close(same["logits"], out["logits"], rtol=0, atol=1e-6)
    assert model(np.zeros((0, 1, 28, 28), np.float32))["logits"].shape == (0, 10)


def test_loading_bad_keys_and_corrupt_weights(trained: Path, tmp_path: Path):
    results = bias_transfer_rs.connect(SCHEMA, trained)
    with pytest.raises(bias_transfer_rs.StoreError,
                       match=f"schema `{SCHEMA}` has no trained model with key `0000`"):
        results.load_model("0000")
    with pytest.raises(bias_transfer_rs.StoreError, match="`zz;--` is not a trained model key"):
        results.load_model("zz;--")
    keys = sorted(results.trained_models().key.unique())
    model = results.load_model(keys[0])
    with pytest.raises(bias_transfer_rs.TrainingError,
                       match=r"input of shape \[2, 3, 28, 28\] does not fit: the model takes "
                             r"\[N, 1, 28, 28\]"):
        model(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(bias_transfer_rs.StoreError,
                       match="schema `nothing_here` has no database under"):
        bias_transfer_rs.load_model(keys[0], "nothing_here", trained)
    assert bias_transfer_rs.trained_models("nothing_here", trained).empty

    # A weights file changed on disk is refused, naming the file.
    copy = tmp_path / "work"
    shutil.copytree(trained, copy)
    row = bias_transfer_rs.connect(SCHEMA, copy).trained_models(key=keys[0]).iloc[0]
    path = copy / "artifacts" / SCHEMA / row.weights_uri.removeprefix("local:")
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(bias_transfer_rs.StoreError, match=f"artifact `{path}`: sha256 mismatch"):
        bias_transfer_rs.load_model(keys[0], SCHEMA, copy)


def execute_notebook(work: Path, schema: str, plots: Path) -> nbformat.NotebookNode:
    """Run the example notebook in a fresh kernel against `work`, writing plots to
    `plots`; returns the executed notebook."""
    notebook = nbformat.read(RECIPES / "notebooks" / "_example.ipynb", as_version=4)
    env = {"BT_WORK_DIR": str(work), "BT_SCHEMA": schema, "BT_PLOT_DIR": str(plots)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(plots.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return notebook


def test_example_notebook_runs_on_any_schema(trained: Path, tmp_path: Path):
    execute_notebook(trained, SCHEMA, tmp_path / "plots")
    for name in ("training_curves.png", "noise_robustness.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5000, name
