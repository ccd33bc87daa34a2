"""The whole pipeline on a small generated dataset in the real idx formats: configs and
rows in the database, weights in the artifact store, transfer semantics, reruns."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors_io
import torch

import bias_transfer_rs
from conftest import RECIPES, make_tiny_dataset, run_main, table_counts, write_recipe
from conftest import TINY as RECIPE


@pytest.fixture
def tiny(tmp_path: Path):
    def make(compress: bool) -> Path:
        recipes = tmp_path / f"recipes-{compress}"
        write_recipe(recipes, make_tiny_dataset(tmp_path / f"data-{compress}",
                                                compress=compress))
        return recipes
    return make


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_trains_stores_and_skips_on_rerun(tiny, work_dir: Path, compress: bool):
    recipes = tiny(compress)
    proc = run_main(["--recipe", RECIPE, "--experiment", "tiny"], work_dir, recipes)
    assert proc.returncode == 0, proc.stderr
    assert "Noisy -> Transfer 1/2] epoch 2/2: train loss" in proc.stderr
    assert "img/s" in proc.stderr

    # 1. Rows: one trained model per distinct stage; the one-stage chain reuses stage 0.
    db = work_dir / "db" / "bias_transfer_2026_01_01_tiny.sqlite"
    counts = table_counts(db)
    assert {k: counts[k] for k in ("fabrikant", "seed", "dataset", "model", "trainer",
                                   "trained_model", "chain_stage")} == {
        "fabrikant": 1, "seed": 1, "dataset": 1, "model": 1, "trainer": 2,
        "trained_model": 2, "chain_stage": 3}
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        rows = {r["comment"]: dict(r) for r in con.execute("SELECT * FROM trained_model")}
        for config in con.execute("SELECT * FROM trainer"):
            decoded = bias_transfer_rs.decode(config["config"])
            assert bias_transfer_rs.config_hash(decoded) == config["hash"]
            assert bias_transfer_rs.make_hash(decoded) == config["legacy_hash"]
            assert decoded["comment"] == config["comment"]
    assert rows["Transfer"]["parent_key"] == rows["Noisy"]["key"]
    assert rows["Noisy"]["parent_key"] is None
    train_stats, final = json.loads(rows["Noisy"]["output"])
    assert len(train_stats) == 2 and set(train_stats[0]) >= {"train_acc", "train_loss",
                                                            "dev_acc", "dev_loss"}
    assert set(final["dev_noise_acc"]["noise_std"]) == {"0.0_1.0", "0.5_1.0"}
    assert final["test_acc"] == rows["Noisy"]["score"]
    assert rows["Noisy"]["score"] > 90.0  # the generated classes are easy to separate
    provenance = json.loads(rows["Noisy"]["provenance"])
    assert provenance["mode"] == "dev" and provenance["commits"] == {"bias_transfer_rs": None}
    assert [(p["repo"], p["revision"], p["block"]) for p in provenance["pins"]] == [
        ("bias_transfer_rs", "abc", "default")]
    assert provenance["bias_transfer_rs"] == bias_transfer_rs.__version__
    assert provenance["bias_transfer_rs_commit"] == bias_transfer_rs.__git_commit__
    assert provenance["torch"] == torch.__version__ and provenance["experiment"] == "tiny"

    # 2. Weights: the stored sha256 matches; transfer froze the core and reset the readout.
    weights = {}
    for comment, row in rows.items():
        path = work_dir / "artifacts" / "bias_transfer_2026_01_01_tiny" / \
            row["weights_uri"].removeprefix("local:")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["weights_sha256"]
        assert path.stat().st_size == row["weights_size"]
        weights[comment] = safetensors_io.load(path)
    assert {k: tuple(v.shape) for k, v in weights["Noisy"].items()} == {
        "core.conv1.weight": (32, 1, 3, 3), "core.conv1.bias": (32,),
        "core.conv2.weight": (64, 32, 3, 3), "core.conv2.bias": (64,),
        "readout.weight": (10, 3136), "readout.bias": (10,)}
    for name in weights["Noisy"]:
        same = torch.equal(weights["Noisy"][name], weights["Transfer"][name])
        assert same == name.startswith("core."), name

    # 3. A second run trains nothing and says so.
    again = run_main(["--recipe", RECIPE, "--experiment", "tiny"], work_dir, recipes)
    assert again.returncode == 0, again.stderr
    assert "nothing to train: all 3 stages were trained before" in again.stdout
    assert table_counts(db)["trained_model"] == 2


def test_same_seed_gives_identical_weights(tiny, tmp_path: Path):
    recipes = tiny(True)
    digests = []
    for run in ("a", "b"):
        work = tmp_path / f"work-{run}"
        proc = run_main(["--recipe", RECIPE, "--experiment", "tiny"], work, recipes)
        assert proc.returncode == 0, proc.stderr
        with sqlite3.connect(work / "db" / "bias_transfer_2026_01_01_tiny.sqlite") as con:
            digests.append(sorted(con.execute("SELECT key, weights_sha256 FROM trained_model")))
    assert digests[0] == digests[1]


def test_ctrl_c_stops_training_and_stores_nothing_of_the_stage(tmp_path: Path, work_dir: Path):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    module = recipes / RECIPE / "tiny.py"
    module.write_text(module.read_text().replace("num_epochs=2", "num_epochs=100000"))
    env = {**os.environ, "BT_WORK_DIR": str(work_dir), "BT_LOG": "info"}
    proc = subprocess.Popen(
        [sys.executable, str(RECIPES / "main.py"), "--recipes-dir", str(recipes), "--quiet",
         "--dev-mode", "--recipe", RECIPE, "--experiment", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if "epoch 2/100000" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the stage in progress was not stored (the next run resumes it" in err
    db = work_dir / "db" / "bias_transfer_2026_01_01_tiny.sqlite"
    assert table_counts(db)["trained_model"] == 0
    # The job went back to the queue with the checkpoint of an epoch it finished.
    with sqlite3.connect(db) as con:
        ((state, epoch),) = con.execute(
            "SELECT state, checkpoint_epoch FROM job WHERE stage = 0").fetchall()[:1]
    assert state == "pending" and epoch >= 1


@pytest.mark.parametrize("optimizer", ["SGD", "RMSprop"])
def test_other_optimisers_train(tmp_path: Path, work_dir: Path, optimizer: str):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"), {
        "num_epochs=2, lr=1e-3": f'num_epochs=2, lr=1e-2, optimizer="{optimizer}", momentum=0.9'})
    proc = run_main(["--recipe", RECIPE, "--experiment", "tiny"], work_dir, recipes)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(work_dir / "db" / "bias_transfer_2026_01_01_tiny.sqlite") as con:
        score, trainer = con.execute(
            "SELECT t.score, c.config FROM trained_model t JOIN trainer c "
            "ON t.trainer_hash = c.hash WHERE t.comment = 'Noisy'").fetchone()
    assert bias_transfer_rs.decode(trainer)["optimizer"] == optimizer
    assert score > 90.0


def test_smoke_runs_are_capped_and_kept_apart(tiny, work_dir: Path):
    recipes = tiny(True)
    args = ["--recipe", RECIPE, "--experiment", "tiny"]
    smoke = run_main([*args, "--smoke"], work_dir, recipes)
    assert smoke.returncode == 0, smoke.stderr
    assert "smoke run: at most 1 epochs of 10 batches per stage" in smoke.stderr
    assert "Noisy -> Transfer [smoke] 1/2] epoch 1/1" in smoke.stderr
    db = work_dir / "db" / "bias_transfer_2026_01_01_tiny.sqlite"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, output, provenance FROM trained_model").fetchall()
        chains = {c for (c,) in con.execute("SELECT DISTINCT chain FROM chain_stage")}
    assert chains == {"Noisy -> Transfer [smoke]", "Noisy [smoke]"}
    assert len(rows) == 2
    for _, output, provenance in rows:
        assert json.loads(provenance)["smoke"] == {"epochs": 1, "batches": 10}
        assert len(json.loads(output)[0]) == 1  # one epoch of the two configured
    smoke_keys = {key for key, _, _ in rows}

    # The full recipe trains every stage anew, under its own keys and chain names.
    full = run_main(args, work_dir, recipes)
    assert full.returncode == 0, full.stderr
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, provenance FROM trained_model").fetchall()
        stages = con.execute("SELECT chain, key FROM chain_stage").fetchall()
    real = {key for key, p in rows if "smoke" not in json.loads(p)}
    assert len(real) == 2 and not real & smoke_keys
    assert {k for c, k in stages if not c.endswith("[smoke]")} == real
    # Other caps, and caps that are not numbers.
    capped = run_main(args, work_dir, recipes, BT_SMOKE="2,3")
    assert capped.returncode == 0, capped.stderr
    assert "at most 2 epochs of 3 batches" in capped.stderr
    # --smoke wins over a BT_SMOKE that says "off".
    off = run_main([*args, "--smoke", "--dry-run"], work_dir, recipes, BT_SMOKE="0")
    assert off.returncode == 0 and "Noisy -> Transfer [smoke]" in off.stdout, off.stderr
    bad = run_main(args, work_dir, recipes, BT_SMOKE="fast")
    assert bad.returncode == 2
    assert "`BT_SMOKE=fast` is not `1`" in bad.stderr
