"""The markdown report of a sweep: ``write_report(sweep_dir) -> <sweep_dir>/report.md``.

Contents: a banner when the data is the synthetic corpus, the status counts, the paired-difference
tables answering "which format benefits most from manifold-aware updates" (each non-baseline
optimizer minus the baseline on the same seed, per format, sorted, with the t and bootstrap CIs and
a flag when the t CI includes 0), per-format "mean ± 95% CI" tables of test micro- and macro-F1,
grid diagnostics and throughput per cell, the plots (``plots/*.png``), every run, and the diverged,
unfinished and missing runs by name.

Command line (regenerates the report from the run folders, trains nothing)::

    python -m altgrad_jax.analysis.report --sweep_dir=runs/matrix
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence

from altgrad_jax.analysis import plots as plots_lib
from altgrad_jax.analysis.results import Run, axes_order, load_sweep, read_plan
from altgrad_jax.analysis.stats import PairedDifference, cell_summaries, paired_differences

DEFAULT_BASELINE = "adamw"
SYNTHETIC_BANNER = (
    "> **SYNTHETIC DATA.** These runs trained on the project's synthetic multi-label corpus, not "
    "on EURLEX57K. The numbers below say nothing about EURLEX57K or about which format is better "
    "on real data; they only show that the pipeline runs.")
_PLOTS = (("f1_by_format.png", "Test micro-F1 by format and optimizer"),
          ("macro_f1_by_format.png", "Test macro-F1 by format and optimizer"),
          ("stall_by_format.png", "Stall ratio (last 20% of steps) by format"),
          ("learning_curves.png", "Train loss"))


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}"


def _signed(v: float, digits: int = 4) -> str:
    return "—" if not math.isfinite(v) else f"{v:+.{digits}f}"


def _ci(lo: float, hi: float, digits: int = 4) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _cell_table(runs: Sequence[Run], metric: str, digits: int = 4) -> list[str]:
    formats, optimizers = axes_order(runs)
    summ = cell_summaries(runs, metric)
    rows = []
    for f in formats:
        row = [f]
        for o in optimizers:
            s = summ.get((f, o))
            if s is None or s.n == 0:
                row.append("—")
            elif s.n == 1:
                row.append(f"{s.mean:.{digits}f} (n=1, no CI)")
            else:
                row.append(f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f} (n={s.n})")
        rows.append(row)
    return _table(["format", *optimizers], rows)


def _paired_section(runs: Sequence[Run], treatment: str, baseline: str) -> list[str]:
    micro = paired_differences(runs, "test/micro_f1", treatment, baseline=baseline)
    macro = {d.format: d for d in paired_differences(runs, "test/macro_f1", treatment,
                                                     baseline=baseline)}
    lines = [f"### {treatment} − {baseline}", ""]
    if not micro:
        return lines + [f"No format has a completed {treatment} run and a completed {baseline} "
                        "run on the same seed.", ""]
    rows = []
    for rank, d in enumerate(micro, start=1):
        s = d.summary
        if s.n < 2:
            verdict = "n/a (1 pair, no CI)"
        elif d.significant:
            verdict = "**yes**"
        else:
            verdict = "no (CI includes 0)"
        m: PairedDifference | None = macro.get(d.format)
        macro_cell = "—" if m is None else (
            f"{_signed(m.summary.mean)} {_ci(m.summary.lo, m.summary.hi)}")
        rows.append([str(rank), d.format, str(s.n), _signed(s.mean), _ci(s.lo, s.hi),
                     _ci(*d.bootstrap), verdict, macro_cell])
    lines += _table(["rank", "format", "pairs", "Δ test micro-F1", "95% t-CI",
                     "95% bootstrap CI", "significant", "Δ test macro-F1 [95% t-CI]"], rows)
    best = micro[0]
    sig = [d for d in micro if d.significant and d.summary.mean > 0]
    lines.append("")
    if sig:
        lines.append(f"Largest significant gain from {treatment}: **{sig[0].format}** "
                     f"({_signed(sig[0].summary.mean)} test micro-F1, 95% CI "
                     f"{_ci(sig[0].summary.lo, sig[0].summary.hi)}, {sig[0].summary.n} pairs).")
    else:
        lines.append(f"No format shows a significant gain from {treatment} over {baseline} "
                     f"(largest mean difference: {best.format}, {_signed(best.summary.mean)}; "
                     "with this many seeds, differences of this size cannot be told from noise).")
    return lines + [""]


def write_report(sweep_dir: str, *, baseline: str | None = None, plots: bool = True) -> str:
    """Writes ``<sweep_dir>/report.md`` (and ``<sweep_dir>/plots/*.png``); returns its path.

    Args:
      sweep_dir: a folder written by ``sweep.py`` (``matrix.json`` and one folder per run).
      baseline: the optimizer preset the paired differences subtract (default: matrix.json's
        ``baseline``, else ``"adamw"``).
      plots: also draw and embed the PNG plots.

    Raises:
      FileNotFoundError: ``sweep_dir`` does not exist.
      ValueError: a malformed run file (``file:line``).
    """
    runs = load_sweep(sweep_dir)
    plan = read_plan(sweep_dir) or {}
    matrix = plan.get("matrix") or {}
    baseline = baseline or matrix.get("baseline") or DEFAULT_BASELINE
    formats, optimizers = axes_order(runs)
    by_status: dict[str, list[Run]] = {}
    for r in runs:
        by_status.setdefault(r.status, []).append(r)
    datasets = sorted({r.dataset for r in runs if r.dataset})

    lines = ["# Experiment matrix report", ""]
    n_synth = sum(r.dataset == "synthetic" for r in runs)
    if n_synth:
        n_known = sum(r.dataset is not None for r in runs)
        lines += [SYNTHETIC_BANNER + f" ({n_synth} of {n_known} runs with a known dataset.)", ""]
    lines += [f"Sweep folder: `{os.path.basename(os.path.abspath(sweep_dir))}`; generated "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}.", ""]
    if matrix:
        lines += [f"Base config: `{matrix.get('base_config', '?')}`; overrides: "
                  f"`{list(matrix.get('overrides') or [])}`.", ""]
    lines += [f"Dataset(s): {', '.join(datasets) if datasets else 'unknown (no finished run)'}. "
              f"Formats: {', '.join(formats) or '—'}. Optimizers: {', '.join(optimizers) or '—'}. "
              f"Seeds: {', '.join(str(s) for s in sorted({r.seed for r in runs})) or '—'}.", ""]
    counts = ", ".join(f"{k}: {len(v)}" for k, v in sorted(by_status.items()))
    lines += [f"Runs: {len(runs)} ({counts or 'none'}). Only completed runs enter the statistics; "
              "CIs are 95% Student-t intervals of the mean over seeds.", ""]

    lines += ["## Which format benefits most from manifold-aware updates?", "",
              f"Paired differences per format: optimizer preset minus `{baseline}` on the same seed "
              "(same initialisation and data order), test micro-F1 at threshold 0.5. A difference "
              "is significant when its 95% t-CI excludes 0.", ""]
    treatments = [o for o in optimizers if o != baseline]
    if baseline not in optimizers:
        lines += [f"The baseline `{baseline}` is not in this sweep: no paired differences.", ""]
    elif not treatments:
        lines += ["The sweep has only the baseline optimizer: no paired differences.", ""]
    else:
        for t in treatments:
            lines += _paired_section(runs, t, baseline)

    lines += ["## Test F1 per format (mean ± 95% CI half-width over seeds)", "",
              "### Test micro-F1", ""]
    lines += _cell_table(runs, "test/micro_f1") + [""]
    lines += ["### Test macro-F1", ""] + _cell_table(runs, "test/macro_f1") + [""]
    lines += ["### Test micro-F1 at the validation-tuned threshold", ""]
    lines += _cell_table(runs, "test_tuned/micro_f1") + [""]

    lines += ["## Grid diagnostics (mean ± 95% CI over seeds)", "",
              "Stall ratio: fraction of updated weights whose quantized value did not change, "
              "averaged over the last 20% of logged steps. With float32 master weights a stall "
              "does not stop learning; with weights on the grid (`grid`) it does.", "",
              "### Stall ratio (last 20% of steps)", ""]
    lines += _cell_table(runs, "summary/stall_ratio_tail") + [""]
    lines += ["### Flip rate (last logged step)", ""]
    lines += _cell_table(runs, "summary/flip_rate_final") + [""]
    if any(r.get("summary/rank_effective_mean_final") is not None for r in runs):
        lines += ["### Effective rank, mean over layers (last measurement)", ""]
        lines += _cell_table(runs, "summary/rank_effective_mean_final", 2) + [""]
    lines += ["### Throughput (train steps/s)", ""]
    lines += _cell_table(runs, "steps_per_s", 3) + [""]

    if {"E0M7", "E1M6"} <= set(formats):
        lines += ["Note: under per-tensor amax scaling E1M6 is the E0M7 grid times 4 and the "
                  "exponent bias has no effect, so E0M7 and E1M6 quantize identically; their "
                  "cells compare one format with itself.", ""]

    if plots and runs:
        lines += ["## Plots", ""]
        plot_dir = os.path.join(sweep_dir, "plots")
        plots_lib.plot_metric_by_format(runs, os.path.join(plot_dir, _PLOTS[0][0]),
                                        "test/micro_f1", "test micro-F1")
        plots_lib.plot_metric_by_format(runs, os.path.join(plot_dir, _PLOTS[1][0]),
                                        "test/macro_f1", "test macro-F1")
        plots_lib.plot_stall_by_format(runs, os.path.join(plot_dir, _PLOTS[2][0]))
        plots_lib.plot_learning_curves(runs, os.path.join(plot_dir, _PLOTS[3][0]))
        for fname, title in _PLOTS:
            lines += [f"![{title}](plots/{fname})", ""]

    lines += ["## Runs", ""]
    rows = [[r.name, r.format, r.optimizer, str(r.seed), r.status,
             "—" if r.step is None else str(r.step), _fmt(r.get("test/micro_f1")),
             _fmt(r.get("test/macro_f1")), _fmt(r.get("test_tuned/micro_f1")),
             _fmt(r.get("summary/stall_ratio_tail")), _fmt(r.get("summary/flip_rate_final")),
             _fmt(r.get("summary/rank_effective_mean_final"), 2), _fmt(r.get("steps_per_s"), 3),
             str(r.fallback_events)] for r in runs]
    lines += _table(["run", "format", "optimizer", "seed", "status", "step", "test micro-F1",
                     "test macro-F1", "tuned micro-F1", "stall (tail)", "flip rate",
                     "eff. rank", "steps/s", "fallbacks"], rows) + [""]

    not_done = [r for r in runs if r.status != "completed"]
    lines += ["## Diverged, unfinished and missing runs", ""]
    if not not_done:
        lines += ["None: every planned run completed.", ""]
    else:
        for r in not_done:
            detail = {"diverged": f"diverged at step {r.step}",
                      "interrupted": f"interrupted at step {r.step} (rerun the sweep to resume)",
                      "incomplete": f"started, no results.json (killed or still running; last "
                                    f"logged step {r.step})",
                      "missing": "never started"}.get(r.status, f"status {r.status!r}")
            if r.reason:
                detail += f": {r.reason}"
            lines.append(f"- `{r.name}`: {detail}")
        lines += ["", "These runs are excluded from every table and CI above; a cell with fewer "
                  "seeds than planned says so in its n.", ""]

    path = os.path.join(sweep_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv: Sequence[str]) -> None:
    """``python -m altgrad_jax.analysis.report --sweep_dir=DIR [--baseline=adamw]``."""
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {list(argv[1:])}")
    try:
        path = write_report(flags.FLAGS.sweep_dir, baseline=flags.FLAGS.baseline or None)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(path)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("sweep_dir", None, "Sweep folder written by sweep.py.")
    flags.DEFINE_string("baseline", "", "Optimizer preset subtracted in the paired differences "
                        "(default: matrix.json's baseline, else adamw).")
    flags.mark_flags_as_required(["sweep_dir"])
    app.run(main)
