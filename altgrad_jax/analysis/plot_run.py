"""A picture of one run: learning curves, stall / flip curves and rank curves in one PNG.

Command (any run folder, finished or not)::

    python -m altgrad_jax.analysis.plot_run --run_dir=runs/quickstart

writes ``<run_dir>/curves.png``; ``launch.py`` does the same at the end of every run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

PNG_NAME = "curves.png"

# (panel title, y label, [(metric key, legend label)])
_PANELS = (
    ("Learning curves", "loss", [("train/loss_avg", "train loss (window mean)"),
                                 ("eval/loss", "validation loss")]),
    ("Validation F1", "F1", [("eval/micro_f1", "micro-F1"), ("eval/macro_f1", "macro-F1")]),
    ("Grid stalls (sampled diagnostics steps)", "fraction",
     [("diag/stall_ratio", "stall ratio"), ("diag/windowed_stall_ratio", "windowed stall"),
      ("diag/below_half_step", "below half step"), ("diag/flip_rate", "flip rate")]),
    ("Rank health", "rank", [("rank/effective_mean", "effective rank (mean)"),
                             ("rank/stable_mean", "stable rank (mean)")]),
)


def read_curves(run_dir: str) -> dict[str, tuple[list[int], list[float]]]:
    """``key -> (steps, values)`` from ``<run_dir>/metrics.jsonl`` (finite numbers only)."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --run_dir must be a run folder written by "
                                "launch.py (it holds metrics.jsonl)")
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            for k, v in row.items():
                finite = isinstance(v, (int, float)) and math.isfinite(v)
                if k != "step" and finite:
                    steps, values = curves.setdefault(k, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(v))
    return curves


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Writes the run's PNG (2 x 2 panels) and returns its path.

    Args:
      run_dir: a run folder.
      out: the PNG path (default ``<run_dir>/curves.png``).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(run_dir)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (title, ylabel, series) in zip(axes.flat, _PANELS):
        drawn = 0
        for key, label in series:
            if key in curves:
                steps, values = curves[key]
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3,
                        label=label)
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, PNG_NAME)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="a run folder (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default <run_dir>/curves.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))


if __name__ == "__main__":
    main()
