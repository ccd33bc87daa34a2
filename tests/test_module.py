"""The installed module: version, build commit, exception classes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_fresh_python_imports_the_module_with_version_and_commit():
    code = "import bias_transfer_rs as b; print(b.__version__); print(b.__git_commit__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd="/", check=True).stdout.split()
    version, commit = out
    cargo = (ROOT / "Cargo.toml").read_text()
    assert f'version = "{version}"' in cargo
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert commit in ({head, f"{head}-dirty"} if dirty else {head})


def test_exceptions_share_one_base():
    import bias_transfer_rs as b

    for exc in (b.RecipeError, b.ConfigError, b.DataError, b.TrainingError, b.StoreError):
        assert issubclass(exc, b.BiasTransferError)


def test_stubs_match_the_compiled_module():
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "bias_transfer_rs._core"],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_wheel_ships_its_stubs_and_marks_itself_typed():
    import bias_transfer_rs as b

    folder = Path(b.__file__).parent
    assert (folder / "py.typed").is_file() and (folder / "_core.pyi").is_file()
    assert "class TrainedModel" in (folder / "_core.pyi").read_text()
