"""The compiled core of bias_transfer_rs."""

from os import PathLike
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "BiasTransferError",
    "ConfigError",
    "DataError",
    "PinningError",
    "RecipeError",
    "StoreError",
    "TrainedModel",
    "TrainingError",
    "__git_commit__",
    "__version__",
    "apply_noise_array",
    "canonical",
    "commit_set_key",
    "config_hash",
    "database",
    "decode",
    "describe_plan",
    "export_commit",
    "init_weights",
    "jobs",
    "load_dataset",
    "load_trained",
    "load_weights",
    "make_hash",
    "orphans",
    "prepare_environment",
    "resolve_commits",
    "resolve_pins",
    "run_plan",
    "train_steps",
    "train_throughput",
    "trained_models",
    "validate_schema",
    "working_tree_state",
    "working_trees",
]
__version__: str
__git_commit__: str

class BiasTransferError(Exception): ...
class RecipeError(BiasTransferError): ...
class PinningError(BiasTransferError): ...
class ConfigError(BiasTransferError): ...
class DataError(BiasTransferError): ...
class TrainingError(BiasTransferError): ...
class StoreError(BiasTransferError): ...

def config_hash(obj: Any) -> str: ...
def make_hash(obj: Any) -> str: ...
def decode(text: str) -> Any: ...
def canonical(obj: Any) -> str: ...
def resolve_commits(
    path: str | PathLike[str], experiment: str
) -> list[tuple[str, str, str]]: ...
def describe_plan(
    plan: dict[str, Any],
    work_dir: str | PathLike[str],
    schema: str,
    data_dir: str | PathLike[str] | None = None,
    check: bool = True,
) -> str: ...
def run_plan(
    plan: dict[str, Any],
    work_dir: str | PathLike[str],
    schema: str,
    data_dir: str | PathLike[str] | None = None,
    quiet: bool = False,
    provenance: str | None = None,
    wait: bool = False,
    retry_errors: bool = False,
) -> str: ...
def validate_schema(schema: str) -> None: ...
def database(work_dir: str | PathLike[str], schema: str) -> str: ...
def jobs(work_dir: str | PathLike[str], schema: str) -> str: ...
def orphans(
    work_dir: str | PathLike[str], schema: str, min_age: float = 600.0, remove: bool = False
) -> str: ...
def trained_models(work_dir: str | PathLike[str], schema: str) -> str: ...
def resolve_pins(
    commits_file: str | PathLike[str],
    experiment: str,
    recipe_dir: str | PathLike[str],
    recipes_dir: str | PathLike[str],
) -> str: ...
def working_trees(
    commits_file: str | PathLike[str],
    experiment: str,
    recipe_dir: str | PathLike[str],
    recipes_dir: str | PathLike[str],
) -> str: ...
def commit_set_key(resolved: str) -> str: ...
def prepare_environment(
    resolved: str,
    python: str | PathLike[str],
    base_site: list[str | PathLike[str]],
    recipes_dir: str | PathLike[str],
    identity: str = "",
    quiet: bool = False,
) -> str: ...
def working_tree_state(path: str | PathLike[str]) -> tuple[str, bool] | None: ...
def apply_noise_array(
    x: npt.NDArray[Any],
    spec: dict[Any, float],
    mode: str,
    seed: int,
    clamp: bool,
    mean: list[float] | None = None,
    norm_std: list[float] | None = None,
    channels_last: bool = False,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32]]: ...
def export_commit(
    repo: str | PathLike[str], revision: str, dest: str | PathLike[str]
) -> int: ...

@final
class TrainedModel:
    """A trained model on the CPU: `forward` runs it on float32 images."""

    @property
    def key(self) -> str: ...
    @property
    def model_config(self) -> dict[str, Any]: ...
    @property
    def dataset_config(self) -> dict[str, Any]: ...
    @property
    def normalization(self) -> tuple[list[float], list[float]]: ...
    @property
    def input_shape(self) -> tuple[int, int, int]: ...
    def forward(
        self, x: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def state_dict(self) -> list[tuple[str, npt.NDArray[np.float32]]]: ...

def load_trained(
    work_dir: str | PathLike[str], schema: str, key: str
) -> TrainedModel: ...
def load_dataset(
    dataset_config: dict[str, Any],
    base: str | PathLike[str],
    data_dir_override: str | PathLike[str] | None = None,
) -> tuple[
    tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
    tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
]: ...
def load_weights(
    model_config: dict[str, Any],
    dataset_config: dict[str, Any],
    weights: str | PathLike[str],
) -> TrainedModel: ...
def train_steps(
    model_config: dict[str, Any],
    trainer_config: dict[str, Any],
    weights: str | PathLike[str],
    images: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    steps: int,
    out: str | PathLike[str],
) -> None: ...
def train_throughput(
    dataset_config: dict[str, Any],
    model_config: dict[str, Any],
    trainer_config: dict[str, Any],
    work_dir: str | PathLike[str],
    seed: int,
    warmup: int,
    steps: int,
    floor: bool = False,
    data_dir: str | PathLike[str] | None = None,
) -> float: ...
def init_weights(
    model_config: dict[str, Any], seed: int, path: str | PathLike[str]
) -> None: ...
