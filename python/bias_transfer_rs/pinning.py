"""Running a recipe on the code it pins: resolve `__commits.json`, prepare the environment of
that commit set, and re-execute the command inside it (or, in dev mode, record the working
trees as they are)."""

from __future__ import annotations

import json
import logging
import os
import site
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bias_transfer_rs import _core
from bias_transfer_rs.recipe import Recipe

log = logging.getLogger(__name__)

#: Set in the environment of a re-executed command: the key of the commit set it runs on.
ENV_VAR = "BT_PINNED_ENV"


@dataclass
class Pinning:
    """How a run's code relates to the pins: `pinned` (inside the environment of the pinned
    commits), `dev` (working trees as they are) or `unpinned` (nothing pinned)."""

    mode: str
    pins: list[dict[str, Any]]
    environment: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def commits(self) -> dict[str, str | None]:
        """Repo name to the commit the run used (dev mode: the working tree's HEAD)."""
        return {p["repo"]: p.get("commit", p.get("head")) for p in self.pins}

    def lines(self) -> list[str]:
        """The pins, one line per repo: the commit, what the revision was, where it came
        from."""
        out = []
        for p in self.pins:
            if self.mode == "dev":
                state = ("not found: " + p["problem"]) if p["problem"] else \
                    f"{p['head']}{' (dirty)' if p['dirty'] else ''} at `{p['path']}`"
                out.append(f"  {p['repo']:<16} {state}; pinned `{p['revision']}` "
                           f"in `{p['block']}`")
            else:
                spelled = "" if p["kind"] == "commit" and p["revision"] == p["commit"] else \
                    f" ({p['kind']} `{p['revision']}`)"
                out.append(f"  {p['repo']:<16} {p['commit']}{spelled} from `{p['block']}`, "
                           f"found in {p['origin']}")
        return out


def base_site_dirs() -> list[str]:
    """The package folders of this interpreter, which a pinned environment sees after its
    own."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    seen: list[str] = []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
    return seen


def resolve(recipe: Recipe, experiment: str | None, dev_mode: bool) -> Pinning:
    """Resolve the pins of an experiment (or of the whole recipe, `default`)."""
    block = experiment or "default"
    args = (recipe.commits_file, block, recipe.path, recipe.recipes_dir)
    if dev_mode:
        trees = json.loads(_core.working_trees(*args))
        warnings = [f"`{t['repo']}` has uncommitted changes in `{t['path']}`: the run is "
                    "not reproducible from its commit" for t in trees if t["dirty"]]
        warnings += [f"`{t['repo']}`: {t['problem']}" for t in trees if t["problem"]]
        return Pinning("dev", trees, warnings=warnings)
    pins = json.loads(_core.resolve_pins(*args))
    warnings = [f"`{p['repo']}` is pinned to the {p['kind']} `{p['revision']}` (in "
                f"`{p['block']}`), which can move; pin the commit {p['commit']} to keep "
                "the run reproducible" for p in pins if p["kind"] != "commit"]
    return Pinning("pinned" if pins else "unpinned", pins, warnings=warnings)


def inside_environment(pinning: Pinning) -> bool:
    """Whether this process already runs in an environment of exactly these commits (one
    that `reexec` started: `BT_PINNED_ENV` names the environment `sys.prefix` is)."""
    wanted = os.environ.get(ENV_VAR)
    if not wanted or Path(sys.prefix).name != wanted:
        return False
    key = _core.commit_set_key(json.dumps(pinning.pins))
    if not wanted.startswith(key + "-"):
        raise _core.PinningError(
            f"this process runs in the environment `{sys.prefix}`, made for other commits "
            f"than the pins resolve to now (commit set `{key}`): a branch or tag moved, or "
            "`__commits.json` changed, while the run started; start it again")
    return True


def _identity() -> str:
    """What a pinned build depends on besides the commits: Python and torch."""
    import torch

    return f"python {sys.version}; torch {torch.__version__}"


def prepare(pinning: Pinning, recipe: Recipe, quiet: bool) -> dict[str, Any]:
    """Export the pinned commits and prepare their environment (cached, locked)."""
    env = json.loads(_core.prepare_environment(
        json.dumps(pinning.pins), Path(sys.executable), [Path(d) for d in base_site_dirs()],
        recipe.recipes_dir, _identity(), quiet))
    pinning.environment = env
    return env


def reexec(env: dict[str, Any], argv: list[str] | None, recipes_dir: Path) -> int:
    """Run the same command with the environment's interpreter. A command started from a
    script (`main.py`, `bias-transfer`) replaces this process; a call from Python runs it
    as a child and returns its exit status."""
    environ = {**os.environ, ENV_VAR: env["key"]}
    script = Path(sys.argv[0])
    sys.stdout.flush()
    sys.stderr.flush()
    own_module = script.resolve() == Path(__file__).with_name("cli.py").resolve()
    try:
        if argv is None and script.is_file() and not own_module:
            os.execve(env["python"], [env["python"], str(script), *sys.argv[1:]], environ)
        command = [env["python"], "-m", "bias_transfer_rs.cli", "--recipes-dir",
                   str(recipes_dir), *(sys.argv[1:] if argv is None else argv)]
        return subprocess.call(command, env=environ)
    except OSError as exc:
        raise _core.PinningError(f"cannot start `{env['python']}` of the environment "
                                 f"`{env['path']}`: {exc}") from exc


def add_working_trees_to_path(pinning: Pinning) -> None:
    """Dev mode: working trees without packaging metadata are imported as they are."""
    for tree in pinning.pins:
        path = tree.get("path")
        if not path or tree["problem"]:
            continue
        if not any((Path(path) / f).is_file() for f in ("pyproject.toml", "setup.py")) \
                and path not in sys.path:
            sys.path.insert(0, path)


def recipes_repository(recipe: Recipe) -> dict[str, Any]:
    """The recipes repository's HEAD and dirty flag (`None` outside git)."""
    state = _core.working_tree_state(recipe.path)
    return {"path": str(recipe.recipes_dir), "head": state[0] if state else None,
            "dirty": state[1] if state else None}
