"""The study report, rebuilt from the records alone: ``write_report(report_dir)`` writes
``REPORT.md``, ``runs.csv`` and ``plots/*.png`` into ``reports/<study>/``.

Inputs: ``<report_dir>/runs/*.json`` (`altgrad_jax.analysis.records`) and, when present,
``<report_dir>/plan.json`` (the cells planned, written by ``sweep.py``). Only completed runs enter
any table; the diverged, unfinished and missing cells are listed by name. The analysis is the
pre-registered one of `altgrad_jax.analysis.stats` (primary metric: test macro-F1 at the
validation-tuned threshold; seed 0 = tuning, never in the test analysis).

Command line (trains nothing)::

    python -m altgrad_jax.analysis.report --study=reports/study_cpu
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import pandas as pd

from altgrad_jax.analysis import answer
from altgrad_jax.analysis import plots as plots_lib
from altgrad_jax.analysis import provenance
from altgrad_jax.analysis import sections
from altgrad_jax.analysis import stats
from altgrad_jax.analysis.answer import (FORMAT_TUNED_STAGE, PRIMARY, analyse_format_tuned,
                                         analyse_primary, answer_paragraph)
from altgrad_jax.analysis.markdown import format_order
from altgrad_jax.analysis.matrix import CONTROLS, PRIMARY_ARMS
from altgrad_jax.analysis.provenance import interim_seeds
from altgrad_jax.analysis.records import MECHANISM_KEYS, load_records, read_json, value

__all__ = ["write_report", "analyse_primary", "analyse_format_tuned", "answer_paragraph",
           "interim_seeds", "PRIMARY"]


SYNTHETIC_BANNER = ("> **SYNTHETIC DATA.** Some runs trained on the project's synthetic corpus, "
                    "not on EURLEX57K: their numbers say nothing about the question.")


CAVEATS = (
    "Exponent bias is irrelevant here: under per-tensor amax scaling the bias is a power of two "
    "the scale absorbs.",
    "E1M6 = E0M7: E1M6 is the E0M7 grid times 4, so under amax scaling both give identical "
    "quantized tensors (the E1M6 section checks the runs bit for bit). The seeds' "
    "gradient-mode ManifoldAdamW is the exception: its stiffness reads the unscaled weight's "
    "binade, so its E1M6 and E0M7 runs differ.",
    "Gradient-mode ManifoldAdamW (`manifold_gradient`, the seeds' algorithm) is AdamW with "
    "epsilon eps/S: Adam's normalisation cancels a per-coordinate scale that is constant in time.",
    "CPU scale (2 layers, d=128, length 128, ~1,000 steps) vs the seeds' full scale (6 layers, "
    "d=384, length 512): 108x fewer FLOPs per train step (12.2 vs 1,314 GFLOP at batch 32, XLA's "
    "cost analysis of the compiled FP32 step) and under one epoch (32,000 of 45,000 training "
    "documents); effects may change with scale.",
    "What is quantized: the dense kernels (attention and MLP) in the named format; the embedding "
    "table is its own factor (`quant.embedding_format`, float32 here unless a record says "
    "otherwise); head, biases and LayerNorm stay float32 and get plain AdamW in every arm.",
    "Tuning: each arm's factor is tuned once, on E3M4 and E6M1 at seed 0, and shared by every "
    "format (the protocol: the arms get the same budget, and no test seed informs it). A "
    "per-format optimum may differ, most plausibly on the formats furthest from the tuning pair "
    "(E0M7, E7M0): a per-format contrast compares the arms at their shared tuned factors, not at "
    "each format's own best. An exploratory probe of E7M0's step sizes, outside this analysis, "
    "is in `reports/probe_e7m0/` (`configs/probe_e7m0.py`); the sensitivity study with every "
    "format tuned on its own is configured in `configs/study_cpu_format_tuned.py` (its report, "
    "once its cells have run: `reports/study_cpu_format_tuned/`): the answer here is the one at "
    "the shared factors, and that study tests whether it survives per-format tuning.",
    "Machines: the study runs in stretches on more than one kind of 2-core CPU box (the Cost "
    "section names them; the seventh stretch's box trained ~2.7x faster per step than the first "
    "one's). The Cost section's step time mixes them, and XLA's arithmetic may differ in the "
    "last bits between CPU kinds (its code is compiled for the host's instruction set). In the "
    "primary stage seed 1's E0M7-E4M3 cells ran on the first box and everything from its E5M2 "
    "cells on the second; the three arms of one format and seed always ran on one box (the "
    "Cost section checks it on every record that names its machine), so a per-format contrast "
    "never spans two machines, and last-bit differences act as another random stream (noise), "
    "not as an effect of an arm.",
)

GRID_MECHANISM_NOTE = (
    " The grid rows compare with the others on flips only: the grid optimizer moves weights by "
    "whole rungs with no snap link, so the update the diagnostics read (for every arm the "
    "intended one, before any snap) is already on the grid. Its updates are the coordinates "
    "that moved (= its flips), so its below-half-step fraction and stall ratio are 0 by "
    "construction and its grid steps per update are grid steps per moved coordinate (at "
    "least 1; a diagnostics step where none moved counts 0).")


@dataclasses.dataclass
class _Study:
    """What one report is built from: the plan, every record by name, the completed ones, the
    completed test-seed ones, the records the primary fit may use (`interim_seeds`) and the primary
    analysis (None until the model fits)."""

    plan: dict | None
    all_recs: dict
    recs: list
    test_recs: list
    fit_recs: list
    seeds: list | None
    a: dict | None
    t: dict | None = None  # the format-tuned analysis (`answer.analyse_format_tuned`)


def _primary_cells(recs, plan) -> set[tuple[str, str]]:
    """The (format, arm) pairs of the primary stage (planned or recorded). A record of one of
    them from another stage (the E1M6 check's E0M7 twins) is analysed in its own section only,
    so that every primary-derived table (cell means, checks, mechanism) reads exactly the
    records of the fit."""
    cells = [c for c in (plan or {}).get("cells", []) if c.get("stage") == stats.PRIMARY_STAGE]
    cells += [r for r in recs if r.get("stage") == stats.PRIMARY_STAGE]
    return {(c["format"], c["arm"]) for c in cells if "format" in c and "arm" in c}


def _open(report_dir: str, n_boot: int) -> _Study:
    plan_path = os.path.join(report_dir, "plan.json")
    plan = read_json(plan_path) if os.path.exists(plan_path) else None
    all_recs = load_records(report_dir)
    recs = [r for r in all_recs.values() if r.get("status") == "completed"]
    primary = _primary_cells(recs, plan)
    test_recs = [r for r in recs if r.get("factor") is None and int(r["seed"]) != 0
                 and (r.get("stage") == stats.PRIMARY_STAGE
                      or (r["format"], r["arm"]) not in primary)]
    seeds = interim_seeds(all_recs, plan)
    fit_recs = [r for r in test_recs if seeds is None or r.get("stage") != stats.PRIMARY_STAGE
                or int(r["seed"]) in seeds]
    return _Study(plan, all_recs, recs, test_recs, fit_recs, seeds,
                  analyse_primary(fit_recs, n_boot=n_boot), analyse_format_tuned(test_recs))


def _first_paragraph(st: _Study, n_done: int, n_planned: int) -> str:
    """The answer (interim while the primary stage runs), or, for a plan without a primary
    stage (an exploratory study), a line saying so."""
    stages = {c.get("stage") for c in (st.plan or {}).get("cells", [])}
    if st.plan is not None and stats.PRIMARY_STAGE not in stages and st.a is None:
        if FORMAT_TUNED_STAGE in stages:
            n = sum(c.get("stage") == FORMAT_TUNED_STAGE for c in st.plan["cells"])
            k = sum(st.all_recs.get(c["name"], {}).get("status") == "completed"
                    for c in st.plan["cells"] if c.get("stage") == FORMAT_TUNED_STAGE)
            return ((answer.format_tuned_paragraph(st.t) if st.t else
                     "**Not answerable yet**: the format-tuned pooled model needs both arms on "
                     "at least two formats, with residual degrees of freedom left.")
                    + f" ({k} of {n} {FORMAT_TUNED_STAGE} cells completed.)")
        return ("**No primary stage in this study's plan** (an exploratory study, outside the "
                "pre-registered analysis): its results are the tables below (stages: "
                + ", ".join(sorted(str(x) for x in stages)) + ").")
    return provenance.interim_note(st.seeds, st.a) + answer_paragraph(st.a, n_done, n_planned)


def _answer_sections(st: _Study, title: str) -> list[str]:
    """The answer, the status, the primary contrast with its checks, the secondary metrics and
    the mechanism."""
    status_lines, n_done, n_planned = provenance.cell_status(st.all_recs, st.plan)
    a = st.a
    lines = [f"# {title}: which 8-bit format benefits most from ULP-aware updates?", "",
             _first_paragraph(st, n_done, n_planned), ""]
    if any(r.get("dataset") == "synthetic" for r in st.recs):
        lines += [SYNTHETIC_BANNER, ""]
    lines += ["## Status", ""] + status_lines + [""]
    lines += ["## Primary contrast (regime b, seeds ≠ 0)", "",
              f"Metric: {PRIMARY[1]}. One pooled OLS model `{stats.FORMULA}`; contrasts with 95% "
              "t-intervals, Holm across formats; G = (arm − adamw_rtn) / (fp32 − adamw_rtn); "
              "P(winner) from a seeded residual bootstrap. Arm columns: mean ± 95% t half-width "
              "over seeds (n seeds); the seeds are paired across arms, so the seed-to-seed "
              "spread cancels in the contrasts, which are far narrower.", ""]
    lines += (answer.primary_table(a, st.fit_recs) if a
              else answer.cells_so_far(st.test_recs)) + [""]
    if a:
        lines += (["### Model checks, sensitivity and power", ""]
                  + answer.checks_text(a, st.fit_recs))
    lines += ["## Secondary metrics", ""] + answer.secondary_metrics(st.fit_recs)
    mech_recs = st.fit_recs if a else st.test_recs  # beside the benefit: the records of its fit
    lines += ["## Mechanism (tail mean over the last 20% of diagnostics steps; rank: last)", "",
              "Fraction of updates below half a grid step, mean |grid steps| moved per updated "
              "coordinate, stall ratio, flips and updates per diagnostics step, effective rank."
              + (GRID_MECHANISM_NOTE if any(r["arm"] == "grid" for r in mech_recs) else ""),
              ""] + sections.mechanism_table(mech_recs, _formats(st), a) + [""]
    lines += sections.mechanism_link(mech_recs, a)
    return lines


def _other_sections(st: _Study) -> list[str]:
    """The seeds' 12 conditions, E1M6, the references, tuning, amendments, cost and caveats."""
    lines, chosen = [], (st.plan or {}).get("chosen", {})
    if st.t is not None or any(c.get("stage") == FORMAT_TUNED_STAGE
                               for c in (st.plan or {}).get("cells", [])):
        lines += ["## Each format tuned on its own (stage format_tuned)", "",
                  "Each arm's factor chosen per format from that format's own tuning cells "
                  "(`tuning_scope='format'`); the same pooled model on the two arms.", ""]
        lines += answer.format_tuned_table(st.t, chosen) + [""]
    lines += ["## The seeds' 12 conditions (regime a)", ""]
    lines += sections.seeds12_section(st.test_recs, chosen) + [""]
    lines += ["## E1M6 next to E0M7", ""] + sections.e1m6_table(st.recs) + [""]
    lines += ["## Per-tensor scaling and the grid optimizer (stage per_tensor)", ""]
    lines += sections.per_tensor_section(st.test_recs, chosen) + [""]
    lines += ["## References (FP32, BF16)", ""] + sections.references_text(st.test_recs) + [""]
    lines += ["## Tuning (seed 0)", ""] + sections.tuning_table(st.recs, st.plan) + [""]
    lines += provenance.amendments_section(st.plan)
    study = (st.plan or {}).get("study") or "study_cpu"
    lines += ["## Cost", ""] + provenance.cost_summary(st.all_recs, study)
    lines += [""] + provenance.machines_summary(st.recs) + [""]
    caveats = CAVEATS + provenance.code_caveats(st.recs)
    return lines + ["## Caveats", ""] + [f"- {c}" for c in caveats] + [""]


def _formats(st: _Study) -> list[str]:
    return format_order(r["format"] for r in st.test_recs)


def _write_csv(report_dir: str, all_recs: dict) -> None:
    """``runs.csv``: every recorded run (any status), its metrics, mechanism tails and perf."""
    rows = [{"name": r["name"], "stage": r.get("stage"), "format": r["format"], "arm": r["arm"],
             "regime": r.get("regime"), "seed": r["seed"], "factor": r.get("factor"),
             "status": r.get("status"), "step": r.get("step"), "dataset": r.get("dataset"),
             "tuned_value": value(r, "applied/value"), **(r.get("metrics") or {}),
             **{f"{k}/tail": value(r, f"mech/{k}/tail") for k in MECHANISM_KEYS},
             **{f"perf/{k}": v for k, v in (r.get("perf") or {}).items()}}
            for r in all_recs.values()]
    pd.DataFrame(rows, columns=None if rows else ["name", "stage", "format", "arm", "regime",
                                                  "seed", "factor", "status"]).to_csv(
        os.path.join(report_dir, "runs.csv"), index=False)


def write_report(report_dir: str, *, plots: bool = True, n_boot: int = 2000) -> str:
    """Writes ``REPORT.md``, ``runs.csv`` and ``plots/*.png`` in ``report_dir``; returns the
    report's path.

    Raises:
      FileNotFoundError: ``report_dir`` does not exist.
      ValueError: a malformed record.
    """
    if not os.path.isdir(report_dir):
        raise FileNotFoundError(f"study folder {report_dir!r} does not exist")
    st = _open(report_dir, n_boot)
    title = (st.plan or {}).get("study") or os.path.basename(os.path.abspath(report_dir))
    lines = _answer_sections(st, title) + _other_sections(st)
    _write_csv(report_dir, st.all_recs)
    lines += ["Every run: [runs.csv](runs.csv).", ""]
    if plots and st.recs:
        lines += _plots(report_dir, st.test_recs, st.fit_recs, _formats(st), st.a)
    path = os.path.join(report_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


BENEFIT_KEYS = MECHANISM_KEYS[:4]  # against the benefit: below half step, grid steps, stalls, flips


def _plots(report_dir, recs, fit_recs, fmts, a: dict | None) -> list[str]:
    """The primary metric and the mechanism (the fit's records, beside its contrasts), the
    benefit against the control's mechanism (once the model fits) and the learning curves
    (every completed test record)."""
    d = os.path.join(report_dir, "plots")
    prim = [f for f in fmts if any(r["format"] == f and r["arm"] in PRIMARY_ARMS for r in recs)]
    plots_lib.plot_metric_by_format(fit_recs if a else recs,
                                    os.path.join(d, "primary_by_format.png"), PRIMARY[0],
                                    prim, PRIMARY_ARMS, PRIMARY[1],
                                    contrasts=a["contrasts"] if a else None)
    plots_lib.plot_mechanism(fit_recs if a else recs, os.path.join(d, "mechanism.png"),
                             MECHANISM_KEYS[:4], prim, PRIMARY_ARMS)
    plots_lib.plot_learning_curves(recs, os.path.join(d, "learning_curves.png"), prim,
                                   PRIMARY_ARMS)
    lines = ["## Plots", "", "![primary metric](plots/primary_by_format.png)", "",
             "![mechanism](plots/mechanism.png)", ""]
    if a:
        plots_lib.plot_benefit_vs_mechanism(fit_recs, os.path.join(d, "benefit_vs_mechanism.png"),
                                            a["contrasts"][CONTROLS[0]], BENEFIT_KEYS,
                                            CONTROLS[0])
        lines += ["![benefit against the mechanism](plots/benefit_vs_mechanism.png)", ""]
    return lines + ["![learning curves](plots/learning_curves.png)", ""]


def main(argv: Sequence[str]) -> None:
    """``python -m altgrad_jax.analysis.report --study=reports/<study>``."""
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {list(argv[1:])}")
    try:
        print(write_report(flags.FLAGS.study))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("study", None, "Study folder (reports/<study>) holding runs/*.json.")
    flags.mark_flags_as_required(["study"])
    app.run(main)
