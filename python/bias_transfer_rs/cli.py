"""The command line: `main.py --recipe R --experiment E --schema S`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bias_transfer_rs import _core
from bias_transfer_rs.recipe import build_plan, find_recipe, load_transfer_experiments, pins


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="main.py",
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
                        help="use the installed code as it is instead of the pinned commits")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
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


def _provenance(recipe: str, experiment: str | None,
                pins: list[tuple[str, str, str]]) -> dict[str, Any]:
    """What produced a trained model: the recipe, its pins, and the software versions."""
    import platform

    import torch

    return {
        "recipe": recipe,
        "experiment": experiment,
        "mode": "dev",
        "pins": [{"repo": r, "revision": rev, "source": src} for r, rev, src in pins],
        "bias_transfer_rs": _core.__version__,
        "bias_transfer_rs_commit": _core.__git_commit__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run(args: argparse.Namespace, recipes_dir: Path) -> int:
    # 1. Find the recipe and resolve its pins.
    recipe = find_recipe(recipes_dir, args.recipe)
    schema = args.schema or recipe.default_schema()
    _core.validate_schema(schema)
    resolved = pins(recipe, args.experiment)
    work_dir = Path(os.environ.get("BT_WORK_DIR") or recipes_dir.parent / "work").resolve()
    data_dir = os.environ.get("BT_DATA_DIR") or None

    # 2. Import the experiments and build the plan.
    plan = build_plan(load_transfer_experiments(recipe, args.experiment))
    print(f"recipe {recipe.name}, experiment {args.experiment or '(all)'}, schema {schema}")
    print(f"work directory {work_dir}")
    print("pinned commits (" + recipe.commits_file.name + "):")
    for repo, revision, source in resolved:
        print(f"  {repo:<16} {revision:<42} from `{source}`")
    if not resolved:
        print(f"  warning: `{recipe.commits_file}` pins no repository")
    print("running with the installed code (dev mode): the pins are stored with each trained "
          "model, not checked out")

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
    provenance = _provenance(recipe.name, args.experiment, resolved)
    reports = json.loads(_core.run_plan(plan, work_dir, schema, data_dir, args.quiet,
                                        json.dumps(provenance)))
    trained = sum(r["status"] == "trained" for r in reports)
    if trained == 0:
        print(f"nothing to train: all {len(reports)} stages were trained before")
    print(_summary_table(reports))
    return 0


def main(argv: list[str] | None = None, recipes_dir: Path | None = None) -> int:
    """Entry point of `main.py` (which passes its own folder) and the `bias-transfer`
    script (which works in the current directory)."""
    args = parse_args(argv)
    recipes_dir = (args.recipes_dir or recipes_dir or Path.cwd()).resolve()
    try:
        return run(args, recipes_dir)
    except _core.BiasTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the stage in progress was not stored; finished stages were",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
