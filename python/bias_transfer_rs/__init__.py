"""bias_transfer_rs: reproducible bias-transfer experiments on a Rust training core."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch  # noqa: F401  (loads libtorch before the extension needs it)

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
from bias_transfer_rs.model import TrainedModel
from bias_transfer_rs.noise import apply_noise
from bias_transfer_rs.store import Results, connect

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BiasTransferError",
    "ConfigError",
    "DataError",
    "PinningError",
    "RecipeError",
    "Results",
    "StoreError",
    "TrainedModel",
    "TrainingError",
    "__git_commit__",
    "__version__",
    "apply_noise",
    "canonical",
    "config_hash",
    "connect",
    "decode",
    "load_model",
    "make_hash",
    "resolve_commits",
    "trained_models",
]


def trained_models(schema: str, work_dir: str | os.PathLike[str] | None = None,
                   **filters: Any) -> pd.DataFrame:
    """The trained models of `schema` as a DataFrame, one row per chain stage, filtered by
    any column: `connect(schema, work_dir).trained_models(**filters)`."""
    return connect(schema, work_dir).trained_models(**filters)


def load_model(key: str, schema: str,
               work_dir: str | os.PathLike[str] | None = None) -> TrainedModel:
    """The trained model of `schema` with `key` (or a unique prefix of it):
    `connect(schema, work_dir).load_model(key)`."""
    return connect(schema, work_dir).load_model(key)
