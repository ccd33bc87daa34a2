"""Reading results: the trained models of a schema as pandas DataFrames, their training
curves and noise sweeps, and the models themselves.

    >>> results = bias_transfer_rs.connect("bias_transfer_2026_12_03_fashion_noise")
    >>> df = results.trained_models(trainer__noise_std=None)
    >>> model = results.load_model(df.key.iloc[0])

The configuration is `main.py`'s: the work directory is `BT_WORK_DIR`, else `work/` beside
the recipes repository (found from the current directory upwards by its `main.py`).
"""

from __future__ import annotations

import difflib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bias_transfer_rs import _core

if TYPE_CHECKING:
    import pandas as pd

    from bias_transfer_rs.model import TrainedModel

# Where a row's values come from: the stage, its scores, its provenance; then the configs.
_RESULT_FIELDS = ("test_acc", "test_loss", "dev_acc", "epoch")
_CONFIG_PARTS = ("dataset", "model", "trainer")


def default_work_dir(recipes_dir: Path | None = None) -> Path:
    """`BT_WORK_DIR`, else `work/` beside the recipes repository: `recipes_dir`, or the
    first folder holding a `main.py` from the current directory upwards."""
    if os.environ.get("BT_WORK_DIR"):
        return Path(os.environ["BT_WORK_DIR"]).resolve()
    if recipes_dir is None:
        here = Path.cwd().resolve()
        recipes_dir = next((p for p in (here, *here.parents) if (p / "main.py").is_file()),
                           None)
        if recipes_dir is None:
            return (here / "work").resolve()
    return (recipes_dir.parent / "work").resolve()


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("reading results as DataFrames needs pandas: "
                          "`pip install 'bias_transfer_rs[notebook]'`") from exc
    return pandas


def connect(schema: str, work_dir: str | os.PathLike[str] | None = None) -> Results:
    """The results of `schema` (`main.py --schema`, by default `bias_transfer_<recipe>`)
    in `work_dir` (default: as `main.py` finds it)."""
    return Results(schema, work_dir)


class Results:
    """The trained models of one schema. Every query reads the database afresh, so a
    notebook sees stages that workers finish while it is open."""

    def __init__(self, schema: str, work_dir: str | os.PathLike[str] | None = None) -> None:
        _core.validate_schema(schema)
        self.schema = schema
        self.work_dir = Path(work_dir).resolve() if work_dir else default_work_dir()

    def __repr__(self) -> str:
        return f"Results(schema={self.schema!r}, work_dir={str(self.work_dir)!r})"

    def rows(self) -> list[dict[str, Any]]:
        """Every trained model as a plain dict, one per chain stage: `chain`, `stage`,
        `key`, `parent_key`, `seed`, `comment`, `score`, `output`, `provenance`, the
        weights' URI, sha256 and size, `created_at`, and each config part as `(fn, hash,
        config)`."""
        rows = json.loads(_core.trained_models(self.work_dir, self.schema))
        for row in rows:
            for part in _CONFIG_PARTS:
                fn, hash_, text = row[part]
                row[part] = (fn, hash_, _core.decode(text))
        return rows

    def trained_models(self, **filters: Any) -> pd.DataFrame:
        """One row per trained chain stage: `chain`, `stage`, `comment`, `seed`, `key`,
        `parent_key`, `score`, the final results (`test_acc`, `test_loss`, `dev_acc`,
        `epoch`), provenance (`mode`, `commits`, `commit.<repo>`, `recipes_commit`,
        `recipes_dirty`, `python`, `torch`, `bias_transfer_rs`), the weights, and every
        config option as `dataset.<option>`, `model.<option>`, `trainer.<option>` (with
        `<part>.fn` and `<part>.hash`).

        Filters keep the rows whose column equals the value, or for which a callable
        returns true: `seed=42`, `chain="Clean -> Transfer"`,
        `trainer__num_epochs=lambda n: n > 2` (`__` stands for `.`); an option name alone
        works where only one part has it. `commit="9716af1"` keeps the rows whose pinned
        code or recipes repository was at a commit starting with it."""
        return _filter(self._frame(), filters)

    def _frame(self) -> pd.DataFrame:
        pd = _pandas()
        records = [_flatten(row) for row in self.rows()]
        columns = ["chain", "stage", "comment", "seed", "key", "parent_key", "score",
                   *_RESULT_FIELDS]
        frame = pd.DataFrame.from_records(records)
        if frame.empty:
            return pd.DataFrame(columns=columns)
        rest = [c for c in frame.columns if c not in columns]
        return frame[columns + rest]

    def training_curves(self, **filters: Any) -> pd.DataFrame:
        """One row per epoch of each trained stage the filters keep (as in
        `trained_models`): `chain`, `stage`, `comment`, `seed`, `key`, `epoch` (from 1) and
        what the trainer recorded (`train_acc`, `train_loss`, `dev_acc`, `dev_loss`, `lr`,
        ...)."""
        pd = _pandas()
        models = self.trained_models(**filters)
        records = []
        for _, model in models.iterrows():
            for epoch, stats in enumerate(model["output"][0] or [], start=1):
                records.append({**_identity(model), "epoch": epoch, **stats})
        return pd.DataFrame.from_records(records, columns=_frame_columns(records, "epoch"))

    def noise_robustness(self, **filters: Any) -> pd.DataFrame:
        """One row per noise level of the `noise_test` sweep of each trained stage the
        filters keep: `chain`, `stage`, `comment`, `seed`, `key`, `kind` (`noise_std` or
        `noise_snr`), `level` (the std or SNR when the level applies one value to every
        sample, else NaN), `level_key` (as stored) and the validation `acc` and `loss`."""
        pd = _pandas()
        models = self.trained_models(**filters)
        records = []
        for _, model in models.iterrows():
            results = model["output"][1] or {}
            accs, losses = results.get("dev_noise_acc", {}), results.get("dev_noise_loss", {})
            for kind, by_level in accs.items():
                for level_key, acc in by_level.items():
                    records.append({
                        **_identity(model), "kind": kind, "level": _level(level_key),
                        "level_key": level_key, "acc": acc,
                        "loss": losses.get(kind, {}).get(level_key),
                    })
        return pd.DataFrame.from_records(records, columns=_frame_columns(records, "kind"))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job (one per chain stage registered): `key`, `chain`, `stage`, `comment`,
        `state` (`pending`, `running`, `done` or `error`), `attempts`, `worker_host`,
        `worker_pid`, `lease_expires`, `started_at`, `finished_at` (seconds since the
        epoch), `error_message` and `error_traceback`. Raises `StoreError` when the schema
        does not exist."""
        return list(json.loads(_core.jobs(self.work_dir, self.schema)))

    def status(self) -> dict[str, Any]:
        """What the workers are doing: `counts` per state, the `running` jobs (with host,
        pid, age and seconds left on the lease) and the `errors` (with the first line of
        the message)."""
        jobs, now = self.jobs(), time.time()
        counts = {state: 0 for state in ("pending", "running", "done", "error")}
        for job in jobs:
            counts[job["state"]] = counts.get(job["state"], 0) + 1
        running = [{**_job_identity(j), "host": j["worker_host"], "pid": j["worker_pid"],
                    "age_s": now - (j["started_at"] or now),
                    "lease_left_s": (j["lease_expires"] or now) - now}
                   for j in jobs if j["state"] == "running"]
        errors = [{**_job_identity(j), "host": j["worker_host"],
                   "error": next(iter((j["error_message"] or "").splitlines()), "")}
                  for j in jobs if j["state"] == "error"]
        return {"counts": counts, "running": running, "errors": errors}

    def orphans(self, min_age: float = 600.0, remove: bool = False) -> list[dict[str, Any]]:
        """The artifacts no row refers to (weights of results that were never stored),
        last written at least `min_age` seconds ago: `uri`, `size` in bytes, `age` in
        seconds. With `remove=True` they are deleted as well."""
        return list(json.loads(_core.orphans(self.work_dir, self.schema, min_age, remove)))

    def load_model(self, key: str) -> TrainedModel:
        """The trained model with `key` (or a unique prefix of it), weights verified against
        their stored sha256."""
        from bias_transfer_rs.model import TrainedModel

        return TrainedModel(_core.load_trained(self.work_dir, self.schema, key))

    def plot_training_curves(self, metric: str = "dev_acc", **filters: Any) -> Any:
        """A matplotlib figure of `metric` per epoch, one line per chain stage (mean over
        seeds, the band their spread)."""
        from bias_transfer_rs.plots import plot_training_curves

        return plot_training_curves(self.training_curves(**filters), metric)

    def plot_noise_robustness(self, kind: str = "noise_std", **filters: Any) -> Any:
        """A matplotlib figure of validation accuracy against noise level, one line per
        chain stage (mean over seeds, the band their spread)."""
        from bias_transfer_rs.plots import plot_noise_robustness

        return plot_noise_robustness(self.noise_robustness(**filters), kind)


def format_status(status: dict[str, Any]) -> str:
    """`status()` as `main.py --status` prints it."""
    counts = status["counts"]
    lines = ["jobs: " + ", ".join(f"{n} {state}" for state, n in counts.items())]
    for job in status["running"]:
        lease = ("lease expired" if job["lease_left_s"] < 0
                 else f"lease {job['lease_left_s']:.0f} s left")
        lines.append(f"  running  {job['chain']} stage {job['stage']} ({job['key'][:10]}) on "
                     f"{job['host']} pid {job['pid']} for {job['age_s']:.0f} s, {lease}")
    for job in status["errors"]:
        lines.append(f"  error    {job['chain']} stage {job['stage']} ({job['key'][:10]}): "
                     f"{job['error']}")
    return "\n".join(lines)


def _job_identity(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("key", "chain", "stage", "comment", "attempts")}


def _identity(model: Any) -> dict[str, Any]:
    return {k: model[k] for k in ("chain", "stage", "comment", "seed", "key")}


def _frame_columns(records: list[dict[str, Any]], after: str) -> list[str]:
    first = ["chain", "stage", "comment", "seed", "key", after]
    rest = [k for r in records for k in r if k not in first]
    return first + list(dict.fromkeys(rest))


def _level(level_key: str) -> float:
    """The value a level applies to every sample: `0.3_1.0` (std 0.3 for all) is 0.3;
    mixtures and ranges are NaN."""
    value, _, share = level_key.partition("_")
    try:
        return float(value) if float(share) == 1.0 else float("nan")
    except ValueError:
        return float("nan")


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    output = row["output"] if isinstance(row["output"], list) else [[], {}]
    results = output[1] if len(output) > 1 and isinstance(output[1], dict) else {}
    provenance = row["provenance"] if isinstance(row["provenance"], dict) else {}
    recipes = provenance.get("recipes_repository") or {}
    commits = provenance.get("commits") or {}
    flat: dict[str, Any] = {
        k: row[k] for k in ("chain", "stage", "comment", "seed", "key", "parent_key", "score")
    }
    flat.update({k: results.get(k) for k in _RESULT_FIELDS})
    flat.update({
        "mode": provenance.get("mode"),
        "commits": commits,
        **{f"commit.{repo}": sha for repo, sha in commits.items()},
        "recipes_commit": recipes.get("head"),
        "recipes_dirty": recipes.get("dirty"),
        "python": provenance.get("python"),
        "torch": provenance.get("torch"),
        "bias_transfer_rs": provenance.get("bias_transfer_rs"),
        "fabrikant": row["fabrikant"],
        "created_at": row["created_at"],
        "weights_uri": row["weights_uri"],
        "weights_sha256": row["weights_sha256"],
        "weights_size": row["weights_size"],
        "output": output,
        "provenance": provenance,
    })
    for part in _CONFIG_PARTS:
        fn, hash_, config = row[part]
        flat[f"{part}.fn"] = fn
        flat[f"{part}.hash"] = hash_
        flat.update({f"{part}.{name}": value for name, value in config.items()})
    return flat


def _column(frame: pd.DataFrame, name: str) -> str:
    """The column a filter names: exact, `__` for `.`, or an option name one part has."""
    for candidate in (name, name.replace("__", ".")):
        if candidate in frame.columns:
            return candidate
    owners = [c for c in frame.columns if c.split(".", 1)[-1] == name and "." in c]
    if len(owners) == 1:
        return str(owners[0])
    if len(owners) > 1:
        raise ValueError(f"filter `{name}` is in several configs ({', '.join(owners)}); "
                         f"name one, e.g. `{owners[0].replace('.', '__')}`")
    # Suggest by full name or by option name, best match first.
    names: dict[str, list[str]] = {}
    for c in map(str, frame.columns):
        for alias in (c, c.split(".", 1)[-1]):
            names.setdefault(alias, []).append(c)
    matches = difflib.get_close_matches(name.replace("__", "."), list(names), n=3)
    close = list(dict.fromkeys(c for m in matches for c in names[m]))[:3]
    hint = f"; did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    raise ValueError(f"filter `{name}` names no column{hint}")


def _filter(frame: pd.DataFrame, filters: dict[str, Any]) -> pd.DataFrame:
    if frame.empty:
        return frame
    keep = [True] * len(frame)
    for name, wanted in filters.items():
        if name == "commit":
            test = _commit_test(str(wanted))
            values = [test(row) for _, row in frame.iterrows()]
        else:
            column = frame[_column(frame, name)]
            check: Callable[[Any], bool] = (
                wanted if callable(wanted) else (lambda v, w=wanted: _equal(v, w)))
            values = [bool(check(v)) for v in column]
        keep = [a and b for a, b in zip(keep, values, strict=True)]
    return frame[keep].reset_index(drop=True)


def _equal(value: Any, wanted: Any) -> bool:
    if wanted is None:
        return value is None or value != value  # None, or NaN where pandas filled a gap
    return bool(value == wanted)


def _commit_test(prefix: str) -> Callable[[Any], bool]:
    prefix = prefix.lower()
    if len(prefix) < 4:
        raise ValueError(f"commit `{prefix}`: give at least 4 hex digits")

    def test(row: Any) -> bool:
        shas = list((row["commits"] or {}).values()) + [row["recipes_commit"] or ""]
        return any(str(sha).startswith(prefix) for sha in shas)

    return test
