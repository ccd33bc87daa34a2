"""bias_transfer_rs: reproducible bias-transfer experiments on a Rust training core."""

import json
import os
from pathlib import Path
from typing import Any

import torch  # noqa: F401  (loads libtorch before the extension needs it)

from bias_transfer_rs import _core
from bias_transfer_rs._core import (
    BiasTransferError,
    ConfigError,
    DataError,
    PinningError,
    RecipeError,
    StoreError,
    TrainingError,
    __git_commit__,
    __version__,
    canonical,
    config_hash,
    decode,
    make_hash,
    resolve_commits,
)
from bias_transfer_rs.noise import apply_noise

__all__ = [
    "BiasTransferError",
    "ConfigError",
    "DataError",
    "PinningError",
    "RecipeError",
    "StoreError",
    "TrainingError",
    "__git_commit__",
    "__version__",
    "apply_noise",
    "canonical",
    "config_hash",
    "decode",
    "make_hash",
    "resolve_commits",
    "trained_models",
]


def trained_models(schema: str,
                   work_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every trained model of `schema`, one dict per chain stage: `chain`, `stage`, `key`,
    `parent_key`, `seed`, `comment`, `score`, `weights_uri`, `weights_sha256`,
    `created_at` and `provenance` (the commits the code came from, the recipes
    repository's HEAD and dirty flag, the Python, torch and bias_transfer_rs versions).

    `work_dir` defaults to `BT_WORK_DIR`, else `work/` in the current directory."""
    folder = Path(work_dir or os.environ.get("BT_WORK_DIR") or "work").resolve()
    return json.loads(_core.trained_models(folder, schema))
