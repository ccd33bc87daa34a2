"""Plots of results with matplotlib: training curves and accuracy against noise level, one
line per chain stage, the mean over seeds with their spread (min to max) as a band."""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plots need matplotlib: `pip install 'bias_transfer_rs[notebook]'`"
                          ) from exc
    return plt


def _label(chain: str, stage: int, comment: str) -> str:
    return f"{chain} [{stage}: {comment}]" if comment else f"{chain} [{stage}]"


def _lines(ax: Any, frame: Any, x: str, y: str) -> None:
    for (chain, stage, comment), group in frame.groupby(["chain", "stage", "comment"],
                                                        sort=True):
        by_x = group.groupby(x)[y]
        xs = np.asarray(by_x.mean().index, dtype=float)
        mean = by_x.mean().to_numpy(dtype=float)
        line = ax.plot(xs, mean, marker="o", markersize=3,
                       label=_label(chain, int(stage), comment))[0]
        if group["seed"].nunique() > 1:
            ax.fill_between(xs, by_x.min().to_numpy(dtype=float),
                            by_x.max().to_numpy(dtype=float), color=line.get_color(),
                            alpha=0.2, linewidth=0)


def plot_training_curves(curves: Any, metric: str = "dev_acc", ax: Any = None) -> Any:
    """`metric` per epoch from a `training_curves()` frame; returns the figure."""
    plt = _pyplot()
    if metric not in curves.columns:
        raise ValueError(f"`{metric}` is not a recorded metric; recorded: "
                         + ", ".join(c for c in curves.columns if c not in
                                     ("chain", "stage", "comment", "seed", "key", "epoch")))
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    _lines(ax, curves, "epoch", metric)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(curves):
        ax.legend(fontsize="small")
    return fig


def plot_noise_robustness(sweep: Any, kind: str = "noise_std", ax: Any = None) -> Any:
    """Validation accuracy against noise level from a `noise_robustness()` frame, for the
    levels of `kind` that apply one value to every sample; returns the figure."""
    plt = _pyplot()
    rows = sweep[(sweep["kind"] == kind) & sweep["level"].notna()] if len(sweep) else sweep
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    _lines(ax, rows, "level", "acc")
    ax.set_xlabel("noise std" if kind == "noise_std" else "signal-to-noise ratio")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    if len(rows):
        ax.legend(fontsize="small")
    return fig
