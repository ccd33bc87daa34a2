"""The quick-start recipe on the real Fashion-MNIST: accuracy bands, robustness, rows,
and the stored weights giving the same accuracy in a plain PyTorch module."""

from __future__ import annotations

import json
import sqlite3

import pytest
import safetensors_io
import torch
from torch import nn

import bias_transfer_rs
from conftest import FASHION, RECIPES, ROOT, read_idx, run_main, table_counts

RECIPE = "_2026_12_03_fashion_noise"
SCHEMA = "bias_transfer_2026_12_03_fashion_noise"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    assert (FASHION / "t10k-images-idx3-ubyte.gz").is_file(), \
        "Fashion-MNIST missing: run scripts/install.sh (Debian package dataset-fashion-mnist)"
    work = tmp_path_factory.mktemp("quickstart") / "work"
    proc = run_main(["--recipe", RECIPE], work, dev_mode=False,
                    BT_CARGO_TARGET_DIR=str(ROOT / "target"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    with sqlite3.connect(work / "db" / f"{SCHEMA}.sqlite") as con:
        con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute(
            "SELECT c.chain, c.stage, t.* FROM chain_stage c JOIN trained_model t "
            "ON c.key = t.key ORDER BY c.chain, c.stage")]
    return work, proc, {(r["chain"], r["stage"]): r for r in rows}


def noise_acc(row: dict, level: str) -> float:
    return json.loads(row["output"])[1]["dev_noise_acc"]["noise_std"][level]


def test_clean_cnn_reaches_the_published_band(quickstart):
    _, _, rows = quickstart
    clean = rows[("Clean -> Transfer", 0)]
    assert clean["comment"] == "Clean"
    assert 88.0 <= clean["score"] <= 93.0


def test_noise_augmented_model_is_more_robust_at_std_03(quickstart):
    _, proc, rows = quickstart
    noisy = rows[("Noise Augmented -> Transfer", 0)]
    clean = rows[("Clean -> Transfer", 0)]
    assert noise_acc(noisy, "0.3_1.0") > noise_acc(clean, "0.3_1.0") + 20.0
    header = next(line for line in proc.stdout.splitlines() if line.startswith("chain")
                  and "test acc" in line)
    assert "std 0.3" in header
    assert f"{noise_acc(noisy, '0.3_1.0'):.2f}" in proc.stdout


def test_rows_and_rerun(quickstart):
    work, _, rows = quickstart
    assert len(rows) == 4
    counts = table_counts(work / "db" / f"{SCHEMA}.sqlite")
    assert (counts["trained_model"], counts["trainer"], counts["dataset"], counts["seed"]) == \
        (4, 3, 1, 1)
    for chain in ("Clean -> Transfer", "Noise Augmented -> Transfer"):
        assert rows[(chain, 1)]["parent_key"] == rows[(chain, 0)]["key"]
        assert rows[(chain, 1)]["score"] >= 85.0
    again = run_main(["--recipe", RECIPE], work, dev_mode=False)
    assert again.returncode == 0, again.stderr
    assert " reused in " in again.stdout
    assert "nothing to train: all 4 stages were trained before" in again.stdout


class SmallCnn(nn.Module):
    """The same architecture in plain PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.core = nn.Module()
        self.core.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.core.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.readout = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.core.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.core.conv2(x)), 2)
        return self.readout(x.flatten(1))


def test_stored_weights_give_the_same_accuracy_in_pytorch(quickstart):
    work, _, rows = quickstart
    clean = rows[("Clean -> Transfer", 0)]
    path = work / "artifacts" / SCHEMA / clean["weights_uri"].removeprefix("local:")
    net = SmallCnn()
    net.load_state_dict(safetensors_io.load(path))
    images = torch.from_numpy(read_idx(FASHION / "t10k-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(read_idx(FASHION / "t10k-labels-idx1-ubyte.gz").astype("int64"))
    with torch.no_grad():
        logits = net(images.float().div(255).unsqueeze(1))
    acc = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    assert acc == pytest.approx(clean["score"], abs=0.02)


def test_the_pinned_commit_of_this_project_trained_the_models(quickstart):
    work, proc, _ = quickstart
    pinned = json.loads((RECIPES / RECIPE / "__commits.json").read_text())["default"]
    assert " prepared in " in proc.stdout and "running in the pinned environment" in proc.stdout
    rows = bias_transfer_rs.connect(SCHEMA, work).rows()
    assert len(rows) == 4
    for row in rows:
        p = row["provenance"]
        assert p["mode"] == "pinned"
        assert p["commits"] == {"bias_transfer_rs": pinned["bias_transfer_rs"]}
        assert p["bias_transfer_rs_commit"] == pinned["bias_transfer_rs"]


def test_quickstart_frame_has_one_row_per_trained_stage(quickstart):
    work, _, rows = quickstart
    pinned = json.loads((RECIPES / RECIPE / "__commits.json").read_text())["default"]
    frame = bias_transfer_rs.trained_models(SCHEMA, work)
    assert sorted(zip(frame.chain, frame.stage, frame.comment, strict=True)) == [
        ("Clean -> Transfer", 0, "Clean"), ("Clean -> Transfer", 1, "Transfer"),
        ("Noise Augmented -> Transfer", 0, "Noise Augmented"),
        ("Noise Augmented -> Transfer", 1, "Transfer")]
    assert {"seed", "key", "parent_key", "score", "test_acc", "dev_acc", "dataset.dataset_cls",
            "model.cnn_builder", "trainer.noise_std", "trainer.freeze",
            "commit.bias_transfer_rs", "recipes_commit", "torch"} <= set(frame.columns)
    for _, row in frame.iterrows():
        assert row.score == rows[(row.chain, row.stage)]["score"]
    assert set(frame["commit.bias_transfer_rs"]) == {pinned["bias_transfer_rs"]}
    assert len(bias_transfer_rs.trained_models(SCHEMA, work,
                                               commit=pinned["bias_transfer_rs"][:8])) == 4
    noisy = frame[frame.comment == "Noise Augmented"].iloc[0]
    assert noisy["trainer.noise_std"][-1] == 0.5


def test_example_notebook_plots_the_quickstart(quickstart, tmp_path):
    from test_notebook import execute_notebook

    work, _, _ = quickstart
    notebook = execute_notebook(work, SCHEMA, tmp_path / "plots")
    for name in ("training_curves.png", "noise_robustness.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5000, name
    table = notebook.cells[3].outputs[0]["data"]["text/plain"]
    assert "Noise Augmented" in table and "Transfer" in table
