"""Recipe folders: finding them, importing an experiment module, and turning its
`transfer_experiments` into a plan of chains."""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bias_transfer.configs.base import BaseConfig
from bias_transfer.configs.experiment import Experiment
from bias_transfer.configs.transfer_experiment import TransferExperiment
from bias_transfer_rs._core import ConfigError, RecipeError, canonical


@dataclass
class Recipe:
    """A recipe folder `_yyyy_mm_dd_name/` inside a recipes directory."""

    recipes_dir: Path
    name: str

    @property
    def path(self) -> Path:
        return self.recipes_dir / self.name

    @property
    def commits_file(self) -> Path:
        return self.path / "__commits.json"

    def experiments(self) -> list[str]:
        """The experiment modules of the recipe."""
        return sorted(p.stem for p in self.path.glob("*.py") if not p.stem.startswith("_"))

    def default_schema(self) -> str:
        """`bias_transfer_<recipe>` without the leading underscore; characters a schema
        name cannot hold become `_`."""
        return "bias_transfer_" + re.sub(r"[^A-Za-z0-9_]", "_", self.name.lstrip("_"))


def find_recipe(recipes_dir: Path, name: str | None) -> Recipe:
    """The recipe folder `name` (a path to it works too), or the first one in sorted
    order when `name` is empty."""
    if not recipes_dir.is_dir():
        raise RecipeError(f"recipes directory `{recipes_dir}` does not exist or is not a "
                          "folder; `--recipes-dir` sets it")
    name = Path(name).name if name else name
    available = sorted(
        p.name for p in recipes_dir.iterdir() if p.is_dir() and p.name.startswith("_2")
    )
    if not name:
        if not available:
            raise RecipeError(f"no recipe folders (`_yyyy_mm_dd_name/`) in `{recipes_dir}`")
        name = available[0]
    recipe = Recipe(recipes_dir, name)
    if not recipe.path.is_dir():
        listed = ", ".join(f"`{a}`" for a in available) or "none"
        raise RecipeError(f"recipe folder `{name}` not found in `{recipes_dir}`; "
                          f"available: {listed}")
    if not recipe.commits_file.is_file():
        raise RecipeError(f"recipe `{name}` has no `__commits.json` in `{recipe.path}`")
    return recipe


def load_transfer_experiments(recipe: Recipe, experiment: str | None) -> dict[Any, Any]:
    """Import the experiment module (or the recipe's `__init__`) and return its
    `transfer_experiments`."""
    if experiment and experiment not in recipe.experiments():
        listed = ", ".join(f"`{e}`" for e in recipe.experiments()) or "none"
        raise RecipeError(f"experiment module `{experiment}` not found in recipe "
                          f"`{recipe.name}` (`{recipe.path}`); available: {listed}")
    module_name = f"{recipe.name}.{experiment}" if experiment else recipe.name
    if str(recipe.recipes_dir) not in sys.path:
        sys.path.insert(0, str(recipe.recipes_dir))
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise RecipeError(f"importing `{module_name}` from `{recipe.recipes_dir}` failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    found = getattr(module, "transfer_experiments", None)
    if not isinstance(found, dict):
        raise RecipeError(f"`{module_name}` defines no `transfer_experiments` dict")
    return found


def _config(config: BaseConfig) -> dict[str, Any]:
    return {"fn": config.fn, "config": config.to_dict(), "comment": config.comment}


def _stage(exp: Experiment) -> dict[str, Any]:
    return {
        "dataset": _config(exp.dataset),
        "model": _config(exp.model),
        "trainer": _config(exp.trainer),
        "seed": int(exp.seed),
        "comment": exp.comment,
    }


def _seed(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"{where}: seed `{value!r}` is not an integer")
    return value


def _checked_stage(exp: Experiment, where: str) -> dict[str, Any]:
    _seed(exp.seed, where)
    stage = _stage(exp)
    for part in ("dataset", "model", "trainer"):
        try:
            canonical(stage[part]["config"])
        except ConfigError as exc:
            raise RecipeError(f"{where}, {part} config: {exc}") from exc
    return stage


def build_plan(transfer_experiments: dict[Any, Any]) -> dict[str, Any]:
    """The plan of a `transfer_experiments` dict: one chain per entry; a plain
    `Experiment` is a one-stage chain."""
    if not transfer_experiments:
        raise RecipeError("`transfer_experiments` is empty: the recipe defines no chains to run")
    chains = []
    for desc, value in transfer_experiments.items():
        name, seed = getattr(desc, "name", str(desc)), getattr(desc, "seed", None)
        if isinstance(value, Experiment):
            value = TransferExperiment([value])
        if not isinstance(value, TransferExperiment):
            raise RecipeError(f"transfer_experiments[{desc!r}] is a {type(value).__name__}, "
                              "not a TransferExperiment or Experiment")
        stages = [_checked_stage(e, f"chain `{name}` stage {i}")
                  for i, e in enumerate(value.experiments)]
        seed = stages[0]["seed"] if seed is None else _seed(seed, f"chain `{name}`")
        chains.append({"name": name, "seed": seed, "stages": stages})
    return {"chains": chains}
