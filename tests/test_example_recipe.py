"""The seed's example recipe (`_2020_04_05_example`: CIFAR10, ResNet-50 with augmentation
and normalised noise, then a transfer with the core frozen and the readout reset) runs to
completion as a smoke run on a small CIFAR-10 folder in the official python layout."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import safetensors_io
import torch

from conftest import run_main, write_cifar

SCHEMA = "bias_transfer_2020_04_05_example"


def test_example_recipe_smoke_run(tmp_path: Path, work_dir: Path):
    write_cifar(tmp_path / "data", n_train=120, n_test=30)
    proc = run_main(["--recipe", "_2020_04_05_example", "--experiment", "baseline",
                     "--smoke"], work_dir, BT_DATA_DIR=str(tmp_path / "data"),
                    BT_SMOKE="2,1")
    assert proc.returncode == 0, proc.stderr
    assert "Noise Augmented -> Transfer [smoke] 2/2] epoch 2/2" in proc.stderr

    with sqlite3.connect(work_dir / "db" / f"{SCHEMA}.sqlite") as con:
        con.row_factory = sqlite3.Row
        rows = {r["comment"].split(".")[-1]: dict(r)
                for r in con.execute("SELECT * FROM trained_model")}
    assert set(rows) == {"Noise Augmented", "Transfer"}
    assert rows["Transfer"]["parent_key"] == rows["Noise Augmented"]["key"]
    for row in rows.values():
        train_stats, final = json.loads(row["output"])
        assert len(train_stats) == 2
        assert set(final["dev_noise_acc"]) == {"noise_std", "noise_snr"}
        assert len(final["dev_noise_acc"]["noise_std"]) == 7
        assert 0.0 <= final["test_acc"] <= 100.0 and final["test_acc"] == row["score"]
        assert json.loads(row["provenance"])["smoke"] == {"epochs": 2, "batches": 1}

    # The transfer froze the core's parameters, while its batch-norm statistics kept
    # updating; the readout was reset and trained.
    weights = {}
    for comment, row in rows.items():
        path = work_dir / "artifacts" / SCHEMA / row["weights_uri"].removeprefix("local:")
        weights[comment] = safetensors_io.load(path)
    first, second = weights["Noise Augmented"], weights["Transfer"]
    assert len(first) == len(second) and "core.layer4.2.bn3.running_var" in first
    assert first["readout.weight"].shape == (10, 2048)
    for name in first:
        same = torch.equal(first[name], second[name])
        if name.startswith("readout."):
            assert not same, name
        elif name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert not same, name
        else:
            assert same, name
    # One batch per epoch, and the best epoch's weights are kept: the counter tells how many
    # batches each stored model saw, the transfer's counting on from its parent's.
    best = {c: json.loads(row["output"])[1]["epoch"] for c, row in rows.items()}
    assert int(first["core.bn1.num_batches_tracked"]) == best["Noise Augmented"]
    assert int(second["core.bn1.num_batches_tracked"]) == best["Noise Augmented"] + best[
        "Transfer"]
