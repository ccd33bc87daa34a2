"""`main.py`: the dry-run plan, and clear errors that write nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import bias_transfer_rs
from conftest import RECIPES, TINY, make_tiny_dataset, run_main, write_recipe

EXAMPLE = "_2020_04_05_example"
QUICK = "_2026_12_03_fashion_noise"


def test_example_dry_run_prints_pins_chains_and_hashes(work_dir: Path):
    proc = run_main(["--recipe", EXAMPLE, "--experiment", "baseline", "--dry-run"], work_dir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # Dev mode: the pins are listed with the working trees, which are not on this machine.
    assert "pinned `d8750eb4bb84e6090da506a4922aabb6ff012296` in `baseline`" in out
    assert "pinned `a63ba9c5a3ad1fa18a80f67a124f0af3b5e053d3` in `default`" in out
    assert "nnfabrik         not found: repo `nnfabrik` not found: looked in" in out
    sys.path.insert(0, str(RECIPES))
    try:
        from _2020_04_05_example import baseline
    finally:
        sys.path.remove(str(RECIPES))
    chain = next(iter(baseline.transfer_experiments.values()))
    lines = [line for line in out.splitlines() if line.startswith("Noise Augmented -> Transfer")]
    assert len(lines) == 2
    for line, exp in zip(lines, chain.experiments, strict=True):
        for config in (exp.dataset, exp.model, exp.trainer):
            assert bias_transfer_rs.config_hash(config.to_dict())[:10] in line
        assert line.split()[-1] == "new"
    # The CIFAR-10 files are not on this machine: the dry run says where it looked and how
    # to get them.
    assert "dataset `CIFAR10`: files not found; looked in" in out
    assert "python -m bias_transfer_rs.datasets CIFAR10 DIR" in out
    assert not work_dir.exists()


def test_pins_of_repositories_that_are_nowhere_are_named(work_dir: Path):
    proc = run_main(["--recipe", EXAMPLE, "--experiment", "baseline", "--dry-run"], work_dir,
                    dev_mode=False)
    assert proc.returncode == 2
    for repo in ("nnfabrik", "bias_transfer", "nnvision", "mlutils"):
        assert f"repo `{repo}` not found: looked in `{RECIPES.parent / repo}`" in proc.stderr
    assert not work_dir.exists()


def test_missing_recipe_folder(work_dir: Path):
    proc = run_main(["--recipe", "_2099_01_01_nope"], work_dir)
    assert proc.returncode == 2
    assert "recipe folder `_2099_01_01_nope` not found" in proc.stderr
    assert f"`{QUICK}`" in proc.stderr
    assert not work_dir.exists()


def test_missing_experiment_module(work_dir: Path):
    proc = run_main(["--recipe", QUICK, "--experiment", "nope"], work_dir)
    assert proc.returncode == 2
    assert "experiment module `nope` not found in recipe" in proc.stderr
    assert "`fashion_noise`" in proc.stderr
    assert not work_dir.exists()


def test_data_directory_without_files(work_dir: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_main(["--recipe", QUICK], work_dir, BT_DATA_DIR=str(empty))
    assert proc.returncode == 2
    err = proc.stderr
    assert "dataset `FashionMNIST`: files not found; looked in" in err
    assert f"`{empty}/FashionMNIST/raw`" in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (work_dir / "db").exists() and not (work_dir / "artifacts").exists()


def test_malformed_commits_file_points_at_line_and_column(work_dir: Path, tmp_path: Path):
    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES / EXAMPLE, recipes / EXAMPLE)
    (recipes / EXAMPLE / "__commits.json").write_text('{\n  "default": {"a": "1",}\n}\n')
    proc = run_main(["--recipe", EXAMPLE, "--dry-run"], work_dir, recipes_dir=recipes)
    assert proc.returncode == 2
    assert "__commits.json`: malformed JSON at line 2, column" in proc.stderr


def test_invalid_schema_name(work_dir: Path):
    proc = run_main(["--recipe", QUICK, "--schema", "a-b; drop"], work_dir)
    assert proc.returncode == 2
    assert "schema `a-b; drop` is not a valid name" in proc.stderr
    assert not work_dir.exists()


def test_empty_recipe_picks_the_first_folder(work_dir: Path):
    proc = run_main(["--dry-run"], work_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"recipe {EXAMPLE}, experiment (all)")


def test_console_script_has_the_options_of_main_py(tmp_path: Path):
    script = Path(sys.executable).parent / "bias-transfer"
    assert script.is_file(), "the wheel installs the `bias-transfer` console script"

    def options(command: list[str]) -> tuple[str, set[str]]:
        out = subprocess.run([*command, "--help"], capture_output=True, text=True,
                             check=True).stdout
        return out.split()[1], set(re.findall(r"--[a-z][a-z-]+", out))

    main_prog, main_options = options([sys.executable, str(RECIPES / "main.py")])
    script_prog, script_options = options([str(script)])
    assert (main_prog, script_prog) == ("main.py", "bias-transfer")
    assert script_options == main_options
    assert {"--recipe", "--experiment", "--schema", "--dry-run", "--smoke", "--status",
            "--orphans", "--wait", "--retry-errors"} <= script_options
    # Without --recipes-dir it works on the recipes repository it is started in.
    recipes = tmp_path / "recipes"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    proc = subprocess.run([str(script), "--dev-mode", "--recipe", TINY, "--experiment", "tiny",
                           "--dry-run"],
                          cwd=recipes, capture_output=True, text=True,
                          env={**os.environ, "BT_WORK_DIR": str(tmp_path / "work"),
                               "BT_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "Noisy -> Transfer" in proc.stdout and f"recipe {TINY}" in proc.stdout
