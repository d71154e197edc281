"""Plots of a study, drawn from its records alone (PNG, matplotlib's Agg canvas; pyplot and the
global backend are untouched).

* `plot_metric_by_format`: a metric per format x arm (mean, 95% t interval, seeds as dots), and
  beside it the pooled model's contrasts per format with their intervals.
* `plot_mechanism`: one panel per mechanism figure (tail mean over the run) against the format.
* `plot_benefit_vs_mechanism`: the per-format benefit (pooled-model contrast, 95% interval)
  against a mechanism figure of the control, one labelled point per format.
* `plot_learning_curves`: train loss against step, one panel per format, one colour per arm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from altgrad_jax.analysis.records import MECHANISM_TITLES, value
from altgrad_jax.analysis.stats import Contrast, by_format, mean_ci, rank_association


LOG_KEYS = ("diag/grid_steps_mean_abs", "diag/flips")  # span decades across arms: log axes


def _log_axis(ax, which: str, values) -> None:
    """A log axis when the values span a decade or more: plain log when all are positive,
    symmetric-log (linear up to the smallest positive value) when zeros occur, so they stay
    visible (e.g. nearest rounding's 0 flips); linear otherwise."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    pos = [v for v in vals if v > 0]
    if not pos or max(pos) < 10.0 * min(pos):
        return
    axis = ax.xaxis if which == "x" else ax.yaxis
    if len(pos) == len(vals):
        getattr(ax, f"set_{which}scale")("log")
    else:
        getattr(ax, f"set_{which}scale")("symlog", linthresh=min(pos))
    axis.set_minor_formatter(NullFormatter())  # minor labels collide within two decades


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    return path


def _values(records, fmt, arm, key) -> list[float]:
    return [v for r in records if r["format"] == fmt and r["arm"] == arm
            and (v := value(r, key)) is not None]


def plot_metric_by_format(records: Sequence[dict], path: str, metric: str, formats: Sequence[str],
                          arms: Sequence[str], ylabel: str,
                          contrasts: dict[str, Sequence] | None = None) -> str:
    """Left: mean of ``metric`` per format x arm with its 95% t interval over seeds (the seeds as
    dots), on an axis fitted to the data (differences of a few 0.001 stay visible). Right, when
    ``contrasts`` is given ({control: [`stats.Contrast` per format]}, labels ``"<format>: ..."``):
    the pooled model's contrasts with their 95% intervals against a line at 0."""
    panels = 2 if contrasts else 1
    fig = Figure(figsize=(max(6.0, 0.45 * len(formats) * len(arms) + 2) + 4.5 * (panels - 1),
                          4.0))
    ax = fig.add_subplot(1, panels, 1)
    width = 0.8 / max(1, len(arms))
    x = np.arange(len(formats))
    for j, arm in enumerate(arms):
        xs = x - 0.4 + width * (j + 0.5)
        summ = [mean_ci(_values(records, f, arm, metric)) for f in formats]
        errs = [0.0 if not math.isfinite(s.half_width) else s.half_width for s in summ]
        ax.errorbar(xs, [s.mean for s in summ], yerr=errs, fmt="o", color=f"C{j}", capsize=3,
                    markersize=5, label=arm)
        for xi, f in zip(xs, formats):
            pts = _values(records, f, arm, metric)
            ax.plot([xi] * len(pts), pts, ".", color=f"C{j}", markersize=3, alpha=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels(formats, rotation=30)
    ax.set_ylabel(ylabel)
    ax.set_title("mean, 95% t-interval over seeds (small dots: seeds)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if contrasts:
        ax2 = fig.add_subplot(1, panels, 2)
        shift = 0.3 / max(1, len(contrasts))
        for k, (control, cs) in enumerate(contrasts.items()):
            by_f = by_format(cs)
            xs = [i + shift * (k - (len(contrasts) - 1) / 2) for i, f in enumerate(formats)
                  if f in by_f]
            got = [by_f[f] for f in formats if f in by_f]
            ax2.errorbar(xs, [c.estimate for c in got],
                         yerr=[[c.estimate - c.lo for c in got], [c.hi - c.estimate for c in got]],
                         fmt="s", capsize=3, markersize=4,
                         label=got[0].label.split(": ", 1)[1] if got else control,
                         color=f"C{list(arms).index(control)}" if control in arms else None)
        ax2.axhline(0.0, color="k", linewidth=0.8)
        ax2.set_xticks(x)
        ax2.set_xticklabels(formats, rotation=30)
        ax2.set_ylabel(f"difference in {ylabel}")
        ax2.set_title("pooled-model contrasts, 95% t-intervals", fontsize=9)
        ax2.grid(axis="y", alpha=0.3)
        ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_mechanism(records: Sequence[dict], path: str, keys: Sequence[str],
                   formats: Sequence[str], arms: Sequence[str]) -> str:
    """One panel per ``mech/<key>/tail`` against the format (mean over seeds), a line per arm."""
    fig = Figure(figsize=(3.6 * len(keys), 3.4))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        seen: list[float] = []
        for arm in arms:
            ys = [mean_ci(_values(records, f, arm, f"mech/{key}/tail")).mean for f in formats]
            ax.plot(range(len(formats)), ys, "o-", label=arm, markersize=3)
            seen += ys
        if key in LOG_KEYS:
            _log_axis(ax, "y", seen)
        ax.set_xticks(range(len(formats)))
        ax.set_xticklabels(formats, rotation=45, fontsize=7)
        ax.set_title(MECHANISM_TITLES.get(key, key), fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_benefit_vs_mechanism(records: Sequence[dict], path: str, benefit: Sequence[Contrast],
                              keys: Sequence[str], control: str) -> str:
    """One panel per ``key``: x = the control arm's ``mech/<key>/tail`` (mean over seeds), y =
    the format's benefit (a `stats.Contrast` per format, its 95% interval as the bar), each
    point labelled with its format; the title carries Spearman's rho (`stats.rank_association`,
    the report's definition). Count-like figures (`LOG_KEYS`) get a log axis."""
    by_f = by_format(benefit)
    fig = Figure(figsize=(3.8 * len(keys), 3.4))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        xs = {f: mean_ci(_values(records, f, control, f"mech/{key}/tail")).mean for f in by_f}
        got = [f for f in by_f if math.isfinite(xs[f])]
        ax.errorbar([xs[f] for f in got], [by_f[f].estimate for f in got],
                    yerr=[[by_f[f].estimate - by_f[f].lo for f in got],
                          [by_f[f].hi - by_f[f].estimate for f in got]],
                    fmt="o", capsize=3, markersize=4)
        for f in got:
            ax.annotate(f, (xs[f], by_f[f].estimate), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        ax.axhline(0.0, color="k", linewidth=0.8)
        if key in LOG_KEYS:
            _log_axis(ax, "x", xs.values())
        assoc = rank_association({f: by_f[f].estimate for f in got}, {f: xs[f] for f in got})
        rho = "" if assoc is None or assoc.constant else f"; Spearman rho {assoc.rho:+.2f}"
        ax.set_title(f"{MECHANISM_TITLES.get(key, key)}\n(one point per format{rho})",
                     fontsize=8)
        ax.set_xlabel(f"{control} (tail mean)", fontsize=8)
        if i == 0:
            label = benefit[0].label.split(": ", 1)[1] if benefit else "benefit"
            ax.set_ylabel(f"{label} [95% CI]", fontsize=8)
        ax.grid(alpha=0.3)
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
        if i % cols == 0:
            ax.set_ylabel("train loss (log every 50 steps)", fontsize=8)
        if i >= len(formats) - cols:
            ax.set_xlabel("step", fontsize=8)
        if seen:
            ax.legend(fontsize=6)
    return _save(fig, path)
