"""bias_transfer_rs: reproducible bias-transfer experiments on a Rust training core."""

import torch  # noqa: F401  (loads libtorch before the extension needs it)

from bias_transfer_rs._core import (
    BiasTransferError,
    ConfigError,
    DataError,
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
]
