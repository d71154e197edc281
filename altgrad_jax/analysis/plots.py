"""Plots of a sweep (PNG, matplotlib's Agg canvas; pyplot and the global backend are untouched).

* `plot_metric_by_format`: a metric (test micro-F1 by default) per format, one bar per optimizer,
  95% Student-t CI error bars, the individual seeds as dots.
* `plot_stall_by_format`: the same layout for the stall ratio over the last 20% of steps.
* `plot_learning_curves`: train loss against step, one panel per optimizer, one colour per format,
  one line per seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from altgrad_jax.analysis.results import axes_order
from altgrad_jax.analysis.stats import cell_summaries


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_metric_by_format(runs: Sequence, path: str, metric: str = "test/micro_f1",
                          ylabel: str | None = None, title: str | None = None) -> str:
    """Grouped bars: ``metric`` per format x optimizer, mean with 95% t-CI, seeds as dots.

    Cells with no finite value are left empty; a cell with one seed has no error bar.
    Returns ``path``.
    """
    formats, optimizers = axes_order(runs)
    summ = cell_summaries(runs, metric)
    fig = Figure(figsize=(max(6.0, 0.9 * len(formats) * max(1, len(optimizers)) / 2 + 3), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(optimizers))
    x = np.arange(len(formats))
    for j, opt in enumerate(optimizers):
        xs = x - 0.4 + width * (j + 0.5)
        means = [summ.get((f, opt)).mean if (f, opt) in summ else math.nan for f in formats]
        errs = [summ[(f, opt)].half_width if (f, opt) in summ else math.nan for f in formats]
        errs = [0.0 if not math.isfinite(e) else e for e in errs]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=opt, alpha=0.8)
        for xi, f in zip(xs, formats):
            pts = [r.get(metric) for r in runs if r.format == f and r.optimizer == opt
                   and r.get(metric) is not None and math.isfinite(r.get(metric))]
            ax.plot([xi] * len(pts), pts, "k.", markersize=4)
    ax.set_xticks(x)
    ax.set_xticklabels(formats, rotation=30)
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"{metric} by format (mean, 95% t-CI, dots = seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_stall_by_format(runs: Sequence, path: str) -> str:
    """Stall ratio over the last 20% of steps per format x optimizer (mean, 95% t-CI)."""
    return plot_metric_by_format(
        runs, path, metric="summary/stall_ratio_tail", ylabel="stall ratio (last 20% of steps)",
        title="Stall ratio by format (weights updated but not moved on the grid)")


def plot_learning_curves(runs: Sequence, path: str) -> str:
    """Train loss vs step: one panel per optimizer, a colour per format, a line per seed."""
    formats, optimizers = axes_order(runs)
    n = max(1, len(optimizers))
    fig = Figure(figsize=(4.2 * n, 3.6))
    colors = {f: f"C{i % 10}" for i, f in enumerate(formats)}
    for j, opt in enumerate(optimizers):
        ax = fig.add_subplot(1, n, j + 1)
        labelled = set()
        for r in runs:
            if r.optimizer != opt or not r.curve:
                continue
            steps, losses = zip(*r.curve)
            label = r.format if r.format not in labelled else None
            labelled.add(r.format)
            ax.plot(steps, losses, color=colors[r.format], alpha=0.75, linewidth=1.0, label=label)
        ax.set_title(opt)
        ax.set_xlabel("step")
        if j == 0:
            ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=7)
    return _save(fig, path)
