"""Plots of a study, drawn from its records alone (PNG, matplotlib's Agg canvas; pyplot and the
global backend are untouched).

* `plot_metric_by_format`: a metric per format, one bar per arm, 95% t-interval bars, seeds as dots.
* `plot_mechanism`: one panel per mechanism figure (tail mean over the run) against the format.
* `plot_learning_curves`: train loss against step, one panel per format, one colour per arm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from altgrad_jax.analysis.records import value
from altgrad_jax.analysis.stats import mean_ci


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    return path


def _values(records, fmt, arm, key) -> list[float]:
    return [v for r in records if r["format"] == fmt and r["arm"] == arm
            and (v := value(r, key)) is not None]


def plot_metric_by_format(records: Sequence[dict], path: str, metric: str, formats: Sequence[str],
                          arms: Sequence[str], ylabel: str) -> str:
    """Grouped bars: mean of ``metric`` per format x arm with the 95% t interval; seeds as dots."""
    fig = Figure(figsize=(max(6.0, 0.5 * len(formats) * len(arms) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(arms))
    x = np.arange(len(formats))
    for j, arm in enumerate(arms):
        xs = x - 0.4 + width * (j + 0.5)
        summ = [mean_ci(_values(records, f, arm, metric)) for f in formats]
        means = [s.mean for s in summ]
        errs = [0.0 if not math.isfinite(s.half_width) else s.half_width for s in summ]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=arm, alpha=0.8)
        for xi, f in zip(xs, formats):
            pts = _values(records, f, arm, metric)
            ax.plot([xi] * len(pts), pts, "k.", markersize=3)
    ax.set_xticks(x)
    ax.set_xticklabels(formats, rotation=30)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} (mean, 95% t-interval, dots = seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_mechanism(records: Sequence[dict], path: str, keys: Sequence[str],
                   formats: Sequence[str], arms: Sequence[str]) -> str:
    """One panel per ``mech/<key>/tail`` against the format (mean over seeds), a line per arm."""
    fig = Figure(figsize=(3.6 * len(keys), 3.4))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for arm in arms:
            ys = [mean_ci(_values(records, f, arm, f"mech/{key}/tail")).mean for f in formats]
            ax.plot(range(len(formats)), ys, "o-", label=arm, markersize=3)
        ax.set_xticks(range(len(formats)))
        ax.set_xticklabels(formats, rotation=45, fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_learning_curves(records: Sequence[dict], path: str, formats: Sequence[str],
                         arms: Sequence[str]) -> str:
    """Train loss vs step: a panel per format, a colour per arm, a line per seed."""
    cols = min(4, max(1, len(formats)))
    rows = math.ceil(max(1, len(formats)) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows))
    colors = {a: f"C{i % 10}" for i, a in enumerate(arms)}
    for i, f in enumerate(formats):
        ax = fig.add_subplot(rows, cols, i + 1)
        seen = set()
        for r in records:
            curve = (r.get("curve") or {}).get("train/loss")
            if r["format"] != f or r["arm"] not in colors or not curve:
                continue
            steps, losses = zip(*curve)
            ax.plot(steps, losses, color=colors[r["arm"]], alpha=0.7, linewidth=0.9,
                    label=None if r["arm"] in seen else r["arm"])
            seen.add(r["arm"])
        ax.set_title(f, fontsize=9)
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=6)
    return _save(fig, path)
