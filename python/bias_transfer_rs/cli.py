"""The command line: `main.py --recipe R --experiment E --schema S`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bias_transfer_rs import _core
from bias_transfer_rs.pinning import (
    ENV_VAR,
    Pinning,
    add_working_trees_to_path,
    inside_environment,
    prepare,
    recipes_repository,
    reexec,
    resolve,
)
from bias_transfer_rs.recipe import Recipe, build_plan, find_recipe, load_transfer_experiments
from bias_transfer_rs.store import Results, default_work_dir, format_status


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the experiments of a recipe: store configs, train every chain "
        "stage in order, store scores and weights.",
    )
    parser.add_argument("--recipe", default="",
                        help="recipe folder `_yyyy_mm_dd_name` (default: the first in order)")
    parser.add_argument("--experiment", default=None,
                        help="experiment module of the recipe (default: the whole recipe)")
    parser.add_argument("--schema", default=None,
                        help="database schema (default: `bias_transfer_<recipe>`)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (chains, config hashes, pins) and stop")
    parser.add_argument("--dev-mode", action="store_true",
                        help="use the installed code and the repositories' working trees as "
                        "they are instead of the pinned commits; records their HEADs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--smoke", action="store_true",
                        help="try the recipe quickly: one epoch of 10 batches per stage "
                        "(`BT_SMOKE=EPOCHS,BATCHES` sets other caps); the results are "
                        "stored under their own keys and marked as smoke runs")
    parser.add_argument("--wait", action="store_true",
                        help="when nothing is left to claim, wait for stages running on other "
                        "workers (and the stages after them) instead of exiting")
    parser.add_argument("--retry-errors", action="store_true",
                        help="queue the stages that failed before again")
    parser.add_argument("--status", action="store_true",
                        help="print the jobs of the schema (counts per state, running jobs "
                        "with host and age, errors) and stop")
    parser.add_argument("--orphans", choices=["list", "remove"], nargs="?", const="list",
                        help="list (or remove) the schema's artifacts that no row refers to, "
                        "written at least --min-age seconds ago, and stop")
    parser.add_argument("--min-age", type=float, default=600.0, metavar="SECONDS",
                        help="with --orphans: skip artifacts younger than this, which may "
                        "belong to a worker about to store its row (default: 600)")
    parser.add_argument("--recipes-dir", type=Path, default=None,
                        help="the recipes repository (default: the folder of main.py, "
                        "else the current directory)")
    return parser.parse_args(argv)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[Any]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _plan_table(reports: list[dict[str, Any]]) -> str:
    rows = [[r["chain"], r["stage"], r["comment"], r["dataset_hash"][:10], r["model_hash"][:10],
             r["trainer_hash"][:10], r["key"][:10], r["status"]] for r in reports]
    header = ["chain", "stage", "comment", "dataset", "model", "trainer", "key", "status"]
    return _table(header, rows)


def _summary_table(reports: list[dict[str, Any]]) -> str:
    levels: list[tuple[str, str]] = []
    for r in reports:
        results = (r.get("output") or [None, {}])[1] or {}
        for kind, by_level in (results.get("dev_noise_acc") or {}).items():
            levels += [(kind, lvl) for lvl in by_level if (kind, lvl) not in levels]
    short = {"noise_std": "std", "noise_snr": "snr"}
    header = ["chain", "stage", "comment", "test acc"]
    header += [f"{short.get(k, k)} {lvl.split('_')[0]}" for k, lvl in levels]
    rows = []
    for r in reports:
        results = (r.get("output") or [None, {}])[1] or {}
        noise = results.get("dev_noise_acc") or {}
        cells = [r["chain"], r["stage"], r["comment"],
                 f"{r['score']:.2f}" if r["score"] is not None else "-"]
        cells += [f"{noise[k][lvl]:.2f}" if lvl in noise.get(k, {}) else "-" for k, lvl in levels]
        rows.append(cells)
    return _table(header, rows)


def _provenance(recipe: Recipe, experiment: str | None, pinning: Pinning,
                recipes_state: dict[str, Any]) -> dict[str, Any]:
    """What produced a trained model: the recipe and its repository's state, the commits the
    code came from, and the software versions."""
    import platform

    import torch

    return {
        "recipe": recipe.name,
        "experiment": experiment,
        "mode": pinning.mode,
        "commits": pinning.commits(),
        "pins": pinning.pins,
        "environment": (pinning.environment or {}).get("key"),
        "recipes_repository": recipes_state,
        "bias_transfer_rs": _core.__version__,
        "bias_transfer_rs_commit": _core.__git_commit__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _pin(args: argparse.Namespace, recipe: Recipe) -> tuple[Pinning, dict[str, Any] | None]:
    """Resolve the pins; the second item is the pinned environment the run must move into,
    `None` when it goes on in this process."""
    pinning = resolve(recipe, args.experiment, args.dev_mode)
    if pinning.mode == "pinned" and inside_environment(pinning):
        pinning.environment = {"key": os.environ[ENV_VAR], "path": sys.prefix}
        print(f"running in the pinned environment `{sys.prefix}`")
        return pinning, None
    print(f"pinned commits ({recipe.commits_file}):")
    print("\n".join(pinning.lines()) or "  none")
    for warning in pinning.warnings:
        print(f"  warning: {warning}")
    if pinning.mode == "dev":
        add_working_trees_to_path(pinning)
        print("dev mode: running the installed code and the working trees as they are")
        return pinning, None
    if pinning.mode == "unpinned":
        print("  warning: nothing is pinned; running the installed code")
        return pinning, None
    env = prepare(pinning, recipe, args.quiet)
    state = "reused" if env["cached"] else "prepared"
    print(f"environment {env['key']} {state} in {env['seconds']:.2f} s: `{env['path']}`")
    return pinning, env


def run(args: argparse.Namespace, recipes_dir: Path, argv: list[str] | None = None) -> int:
    # 1. Find the recipe; pin its code, continuing in the pinned environment if need be.
    if args.smoke and os.environ.get("BT_SMOKE", "").strip() in ("", "0"):
        os.environ["BT_SMOKE"] = "1"
    recipe = find_recipe(recipes_dir, args.recipe)
    schema = args.schema or recipe.default_schema()
    _core.validate_schema(schema)
    if args.status:
        results = Results(schema, default_work_dir(recipes_dir))
        print(f"database {_core.database(results.work_dir, schema)}")
        print(format_status(results.status()))
        return 0
    if args.orphans:
        results = Results(schema, default_work_dir(recipes_dir))
        found = results.orphans(args.min_age, remove=args.orphans == "remove")
        verb = "removed" if args.orphans == "remove" else "found"
        print(f"{len(found)} orphaned artifacts {verb} "
              f"({sum(o['size'] for o in found)} bytes)")
        for orphan in found:
            print(f"  {orphan['uri']}  {orphan['size']} bytes, {orphan['age']:.0f} s old")
        return 0
    if ENV_VAR not in os.environ:
        print(f"recipe {recipe.name}, experiment {args.experiment or '(all)'}, "
              f"schema {schema}")
    pinning, env = _pin(args, recipe)
    if env is not None:
        return reexec(env, argv, recipes_dir)
    work_dir = default_work_dir(recipes_dir)
    data_dir = os.environ.get("BT_DATA_DIR") or None
    print(f"work directory {work_dir}")
    print(f"database {_core.database(work_dir, schema)}")

    # 2. Import the experiments and build the plan (the recipes repository's state is taken
    #    first: importing writes `__pycache__` folders into it).
    recipes_state = recipes_repository(recipe)
    plan = build_plan(load_transfer_experiments(recipe, args.experiment))

    # 3. Describe the plan (a dry run also checks every stage, as a run does); stop there
    #    for a dry run.
    reports = json.loads(_core.describe_plan(plan, work_dir, schema, data_dir, args.dry_run))
    print(_plan_table(reports))
    for r in reports:
        if r["problem"]:
            print(f"  ! {r['chain']} stage {r['stage']}: {r['problem']}")
    if args.dry_run:
        return 0

    # 4. Train what is new and print the summary.
    provenance = _provenance(recipe, args.experiment, pinning, recipes_state)
    reports = json.loads(_core.run_plan(plan, work_dir, schema, data_dir, args.quiet,
                                        json.dumps(provenance), args.wait, args.retry_errors))
    counts = {status: sum(r["status"] == status for r in reports)
              for status in ("trained", "done", "running", "error", "new")}
    if counts["done"] == len(reports):
        print(f"nothing to train: all {len(reports)} stages were trained before")
    print(_summary_table(reports))
    if counts["running"]:
        print(f"{counts['running']} stages are running on other workers; `--wait` stays "
              "until they and the stages after them are done")
    if counts["new"]:
        print(f"{counts['new']} stages wait for an earlier stage of their chain")
    if counts["error"]:
        print(f"{counts['error']} stages failed (`--status` shows why); `--retry-errors` "
              "runs them again")
    return 0


def main(argv: list[str] | None = None, recipes_dir: Path | None = None) -> int:
    """Entry point of `main.py` (which passes its own folder) and the `bias-transfer`
    script (which works in the current directory)."""
    args = parse_args(argv)
    recipes_dir = (args.recipes_dir or recipes_dir or Path.cwd()).resolve()
    try:
        return run(args, recipes_dir, argv)
    except _core.BiasTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the stage in progress was not stored (the next run resumes it "
              "from its last epoch's checkpoint); finished stages were", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
