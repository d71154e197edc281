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

import collections
import dataclasses
import fractions
import math
import os
from collections.abc import Sequence

import pandas as pd

from altgrad_jax.analysis import plots as plots_lib
from altgrad_jax.analysis import stats
from altgrad_jax.analysis.matrix import ARMS, CONTROLS, PRIMARY_ARMS, TREATMENT
from altgrad_jax.analysis import cost as cost_lib
from altgrad_jax.analysis import tuning as tuning_lib
from altgrad_jax.analysis.records import (MECHANISM_KEYS, MECHANISM_TITLES, load_records,
                                          read_json, value)

PRIMARY = ("test_tuned/macro_f1", "test macro-F1 (tuned threshold)")
SECONDARY = (("test_tuned/micro_f1", "test micro-F1 (tuned threshold)"),
             ("test/pr_auc_micro", "test micro PR-AUC"))
FORMAT_TUNED_STAGE = "format_tuned"  # test cells at each (arm, format)'s own tuned factor
FORMAT_ORDER = ("E0M7", "E1M6", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0", "BF16", "none")
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
    "format tuned on its own is `configs/study_cpu_format_tuned.py` "
    "(`reports/study_cpu_format_tuned/`).",
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


def _f(v, d=4) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{d}f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def _ci(c) -> str:
    return f"{c.estimate:+.4f} [{c.lo:+.4f}, {c.hi:+.4f}]"


def _paired_ci(d: stats.Summary) -> str:
    """A paired difference's mean and t interval (`stats.paired_differences`); "—" below n = 2."""
    return "—" if d.n < 2 else f"{d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _table_or_none(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """`_table`, or one line saying there is nothing yet (no header-only tables)."""
    return _table(header, rows) if rows else ["No completed cells yet."]


def _order(values) -> list[str]:
    vals = set(values)
    return [f for f in FORMAT_ORDER if f in vals] + sorted(vals - set(FORMAT_ORDER))


def _mean_cell(recs, fmt, arm, key, digits: int = 4) -> str:
    s = stats.mean_ci([v for r in recs if r["format"] == fmt and r["arm"] == arm
                       and (v := value(r, key)) is not None])
    if s.n == 0:
        return "—"
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f} (n={s.n})"


MECHANISM_DIGITS = {"diag/flips": 1, "diag/updates": 0, "rank/effective_mean": 2}  # counts, ranks


def analyse_primary(records: Sequence[dict], metric: str = PRIMARY[0], *, n_boot: int = 2000,
                    seed: int = 0) -> dict | None:
    """The pre-registered analysis of ``metric`` (None until the pooled model can be fitted):
    ``fit``, ``contrasts`` ({control: [Contrast per format]}), ``se``, ``mde`` and ``mde_holm``
    (the largest standard error of a per-format contrast against ``CONTROLS[0]`` and the benefit
    it detects with 80% power at alpha 0.05, and at Holm's strictest level 0.05 / formats;
    `stats.minimum_detectable_effect`), ``checks`` (`stats.ModelChecks`), ``alone`` and
    ``alone_trend`` (the per-format contrasts against ``CONTROLS[0]`` with each format's own
    variance, `stats.format_alone_contrasts`, and their exponent-bit slope), ``best``,
    ``runner_up``,
    ``best_vs_runner_up``, ``p_winner`` (and ``p_winner_within``, residuals resampled within
    each format), ``trend``, ``gap`` ({(format, arm): G})."""
    df = stats.primary_frame(records, metric, PRIMARY_ARMS)
    fit = stats.fit_pooled(df, PRIMARY_ARMS, formats=_order(df["format"]))
    if fit is None:
        return None
    control = CONTROLS[0]
    best, second, bvr = stats.best_vs_runner_up(fit, TREATMENT, control)
    fp32 = stats.mean_ci([value(r, metric) for r in records if r["format"] == "none"
                          and r["arm"] == "adamw" and r.get("factor") is None
                          and int(r["seed"]) != 0 and value(r, metric) is not None]).mean
    contrasts = {c: stats.format_contrasts(fit, TREATMENT, c) for c in CONTROLS}
    se = max(c.se for c in contrasts[control])  # equal in a balanced design
    alone = stats.format_alone_contrasts(df, TREATMENT, control, fit.formats)
    w = stats.trend_weights(list(stats.by_format(alone)))
    return {"fit": fit, "contrasts": contrasts, "se": se, "checks": stats.model_checks(fit),
            "alone": alone,
            "alone_trend": None if w is None or len(alone) < 2 else stats.welch_combination(
                alone, w, f"slope of ({TREATMENT} - {control}) on exponent bits, own variances"),
            "alone_bvr": _alone_best_vs_runner_up(alone, best, second),
            "mde": stats.minimum_detectable_effect(se, float(fit.res.df_resid)),
            "mde_holm": stats.minimum_detectable_effect(se, float(fit.res.df_resid),
                                                        alpha=0.05 / len(fit.formats)),
            "best": best, "runner_up": second, "best_vs_runner_up": bvr,
            "p_winner": stats.winner_probability(fit, TREATMENT, control, n_boot=n_boot,
                                                 seed=seed),
            "p_winner_within": stats.winner_probability(fit, TREATMENT, control, n_boot=n_boot,
                                                        seed=seed, within_format=True),
            "trend": stats.exponent_trend(fit, TREATMENT, control),
            "gap": stats.gap_closed(stats.cell_means(df), fp32 if math.isfinite(fp32) else None),
            "fp32": fp32}


def analyse_format_tuned(records: Sequence[dict], metric: str = PRIMARY[0]) -> dict | None:
    """ulp_sr − adamw_sr per format with each arm tuned on each format itself (the records of
    stage `FORMAT_TUNED_STAGE`; a study with ``tuning_scope="format"``): the same pooled model
    on the two arms, Holm across formats. None until it can be fitted."""
    arms = (CONTROLS[0], TREATMENT)
    df = stats.primary_frame(records, metric, arms, stage=FORMAT_TUNED_STAGE)
    fit = stats.fit_pooled(df, arms, formats=_order(df["format"]))
    if fit is None:
        return None
    best, second, bvr = stats.best_vs_runner_up(fit, TREATMENT, CONTROLS[0])
    return {"fit": fit, "contrasts": stats.format_contrasts(fit, TREATMENT, CONTROLS[0]),
            "best": best, "runner_up": second, "best_vs_runner_up": bvr,
            "trend": stats.exponent_trend(fit, TREATMENT, CONTROLS[0]),
            "checks": stats.model_checks(fit)}


def _holm_significant(contrasts) -> list[str]:
    """``"<format> (+)"`` / ``"(−)"`` for each per-format contrast with Holm p < 0.05."""
    return [f"{f} ({'+' if c.estimate > 0 else '−'})"
            for f, c in stats.by_format(contrasts).items() if c.p_holm < 0.05]


def format_tuned_paragraph(t: dict) -> str:
    """The answer of a format-tuned study: the benefit per format at each arm's own factor."""
    by_f = stats.by_format(t["contrasts"])
    best, bvr = t["best"], t["best_vs_runner_up"]
    sig = _holm_significant(t["contrasts"])
    verdict = ("distinguishable from" if bvr.excludes_zero and bvr.estimate > 0
               else "not distinguishable from")
    return (f"With each arm tuned on each format itself (its own factor, seed 0 validation), the "
            f"largest benefit of ULP-aware updates beyond unbiased rounding (ulp_sr − adamw_sr, "
            f"{PRIMARY[1]}) is on **{best}**, {_ci(by_f[best])} (95% CI; Holm p = "
            f"{by_f[best].p_holm:.3g}), **{verdict}** the runner-up ({t['runner_up']}: best − "
            f"runner-up {_ci(bvr)}). Holm-significant: {', '.join(sig) or 'none'}. Trend per "
            f"exponent bit: {_ci(t['trend'])}. (Pooled OLS on the two arms, "
            f"{t['fit'].res.df_resid:.0f} residual df.)")


def _format_tuned(t: dict | None, chosen: dict) -> list[str]:
    """The format-tuned contrast table: per format each arm's own factor and the benefit."""
    if t is None:
        return ["Not enough completed cells for the pooled model yet."]
    arms = (CONTROLS[0], TREATMENT)
    rows = [[f, *(tuning_lib.choice_for(chosen, arm, f) or "—" for arm in arms), _ci(c),
             f"{c.p_holm:.3g}"] for f, c in stats.by_format(t["contrasts"]).items()]
    mc = t["checks"]
    return _table(["format", f"{CONTROLS[0]} factor", f"{TREATMENT} factor",
                   f"{TREATMENT} − {CONTROLS[0]} [95% CI]", "Holm p"], rows) + [
        "", f"Best − runner-up ({t['best']} − {t['runner_up']}): {_ci(t['best_vs_runner_up'])}. "
            f"Residual spread equal across formats: Brown–Forsythe p = {_p(mc.spread_p)}; "
            f"residuals normal: Shapiro–Wilk p = {_p(mc.normal_p)}."]


def _alone_best_vs_runner_up(alone, best: str, second: str):
    """Best − runner-up from the formats' own models (independent fits of disjoint cells, so
    the Welch–Satterthwaite combination applies); None when either has no own contrast."""
    own = stats.by_format(alone)
    if best not in own or second not in own:
        return None
    return stats.welch_combination([own[best], own[second]], [1.0, -1.0],
                                   f"{best} - {second}, own variances")


def answer_paragraph(a: dict | None, n_done: int, n_planned: int) -> str:
    """The report's first paragraph: the answer with numbers and intervals, or why there is none."""
    missing = f" ({n_done} of {n_planned} primary cells completed.)" if n_planned else ""
    if a is None:
        return ("**Not answerable yet.** The pooled model needs every primary arm (adamw_rtn, "
                "adamw_sr, ulp_sr) completed on at least two formats, with residual degrees of "
                "freedom left; while the primary stage runs only complete seed blocks (every "
                f"primary cell of a test seed) enter it, so it needs two of them.{missing}")
    by_f = stats.by_format(a["contrasts"][CONTROLS[0]])
    rtn = stats.by_format(a["contrasts"][CONTROLS[1]])
    best, second, bvr = a["best"], a["runner_up"], a["best_vs_runner_up"]
    b = by_f[best]
    sig = [f for f, c in by_f.items() if c.p_holm < 0.05 and c.estimate > 0]
    head = (f"Largest benefit of ULP-aware updates beyond unbiased rounding (ulp_sr − adamw_sr, "
            f"{PRIMARY[1]}): **{best}**, {_ci(b)} (95% CI; Holm p = {b.p_holm:.3g}); against "
            f"naive rounding (ulp_sr − adamw_rtn) {_ci(rtn[best])}.")
    if bvr.excludes_zero and bvr.estimate > 0:
        verdict = (f" **{best} benefits most**: best − runner-up ({second}) = {_ci(bvr)}, "
                   f"bootstrap P({best} is the winner) = {a['p_winner'][best]:.2f}.")
    else:
        verdict = (f" **The winner is not distinguishable** from the runner-up ({second}): best − "
                   f"runner-up = {_ci(bvr)} includes 0 (bootstrap P({best} is the winner) = "
                   f"{a['p_winner'][best]:.2f}).")
    g = a["gap"].get((best, TREATMENT), float("nan"))
    gap = (f" On {best} ulp_sr closes G = {g:.2f} of the adamw_rtn-to-FP32 gap (adamw_sr: "
           f"{a['gap'].get((best, CONTROLS[0]), float('nan')):.2f})." if math.isfinite(g) else "")
    count = gap + (f" Formats with a Holm-significant positive benefit: "
             f"{', '.join(sig) if sig else 'none'} (per format the design detects a true "
             f"benefit of {a['mde']:.4f} with 80% power at α = 0.05, {a['mde_holm']:.4f} at "
             f"Holm's strictest α/{len(a['fit'].formats)}). Trend of the benefit per exponent bit: "
             f"{_ci(a['trend'])}.")
    return head + verdict + count + _robust_sentence(a) + missing


def _robust_sentence(a: dict) -> str:
    """When the residual spread differs between formats (Brown-Forsythe p < 0.05): the same
    claims with each format's own variance (`stats.format_alone_contrasts`)."""
    mc, alone, trend, bvr = a["checks"], a["alone"], a["alone_trend"], a.get("alone_bvr")
    if not mc.spread_p < 0.05 or not alone:
        return ""

    own, pooled = _holm_significant(alone), _holm_significant(a["contrasts"][CONTROLS[0]])
    lost = [f for f in pooled if f not in own]
    best = stats.by_format(alone).get(a["best"])
    return (f" The residual spread differs between formats (Brown–Forsythe p = "
            f"{_p(mc.spread_p)}), so the same contrasts with each format's own variance (its "
            f"own model, t on {alone[0].df:.0f} df, Holm): {a['best']} "
            + (_ci(best) if best else "—")
            + (f", best − runner-up {_ci(bvr)} (Welch–Satterthwaite, {bvr.df:.1f} df)"
               if bvr is not None and math.isfinite(bvr.df) else "")
            + f"; Holm-significant: {', '.join(own) or 'none'}"
            + (f" (in the pooled model only: {', '.join(lost)})" if lost else "")
            + (f"; trend {_ci(trend)} (Welch–Satterthwaite, {trend.df:.1f} df)." if trend
               else "."))


def _primary_table(a: dict, recs) -> list[str]:
    rows = []
    c_sr = stats.by_format(a["contrasts"]["adamw_sr"])
    c_rtn = stats.by_format(a["contrasts"]["adamw_rtn"])
    for f in a["fit"].formats:
        rows.append([f, *(_mean_cell(recs, f, arm, PRIMARY[0]) for arm in PRIMARY_ARMS),
                     _ci(c_sr[f]), f"{c_sr[f].p_holm:.3g}", _ci(c_rtn[f]),
                     f"{c_rtn[f].p_holm:.3g}", _f(a["gap"].get((f, "adamw_sr")), 2),
                     _f(a["gap"].get((f, "ulp_sr")), 2), f"{a['p_winner'][f]:.2f}"])
    return _table(["format", *PRIMARY_ARMS, "ulp_sr − adamw_sr [95% CI]", "Holm p",
                   "ulp_sr − adamw_rtn [95% CI]", "Holm p", "G adamw_sr", "G ulp_sr",
                   "P(winner)"], rows)


def _checks(a: dict, recs) -> list[str]:
    """The pooled model's checks: its residuals' spread per format and normality, each format's
    contrast from its own model and variance and from its own seeds alone (paired, no model),
    and the design's power."""
    fit, control = a["fit"], CONTROLS[0]
    mc = a["checks"]
    pooled, alone = stats.by_format(a["contrasts"][control]), stats.by_format(a["alone"])
    rows = []
    for f in fit.formats:
        d = stats.paired_differences(recs, f, TREATMENT, control, PRIMARY[0])
        own = alone.get(f)
        rows.append([f, _ci(pooled[f]), f"{pooled[f].p_holm:.3g}",
                     "—" if own is None else f"{_ci(own)} ({own.df:.0f} df)",
                     "—" if own is None else f"{own.p_holm:.3g}",
                     _paired_ci(d) + (f" (n={d.n})" if d.n >= 2 else ""),
                     f"{mc.sd_by_format[f]:.4f}"])
    se, mde, mde_holm, df_resid = a["se"], a["mde"], a["mde_holm"], float(fit.res.df_resid)
    widest = max(pooled, key=lambda f: pooled[f].hi)
    trend = a["alone_trend"]
    return (_table(["format", f"{TREATMENT} − {control}, pooled model [95% CI]", "Holm p",
                    "this format's own model and variance [95% CI]", "Holm p",
                    "its seeds alone, paired [95% CI]", "residual SD"], rows)
            + ["", f"Residual spread the same in every format (the pooled model assumes it): "
               f"Brown–Forsythe p = {_p(mc.spread_p)}; residuals normal (the t intervals assume "
               f"it): Shapiro–Wilk p = {_p(mc.normal_p)} ({len(fit.frame)} residuals, residual "
               f"SD {mc.resid_sd:.4f}, {df_resid:.0f} df). The own-model column fits "
               "`y ~ C(arm) + C(seed)` on each format's cells alone (`stats."
               "format_alone_contrasts`: its own residual variance, exact t on its own df); "
               "the paired column drops the model altogether (the format's own seeds, t on "
               "n − 1 df), at the price of width."
               + (f" Trend per exponent bit with the formats' own variances: {_ci(trend)} "
                  f"(Welch–Satterthwaite, {trend.df:.1f} df; pooled: {_ci(a['trend'])})."
                  if trend else "")
               + " P(winner) with each residual resampled within its own format (the formats' "
                 "unequal spread kept; `winner_probability(within_format=True)`): "
               + ", ".join(f"{f} {a['p_winner_within'][f]:.2f} (pooled residuals "
                           f"{a['p_winner'][f]:.2f})"
                           for f in sorted(fit.formats, key=lambda f: -a["p_winner"][f])[:3])
               + ".",
               "", f"Power: each per-format contrast has SE {se:.4f} on {df_resid:.0f} residual "
               f"df, so a true benefit of {mde:.4f} is detected with 80% power at α = 0.05 "
               f"two-sided ({mde_holm:.4f} at α = 0.05/{len(fit.formats)}, Holm's strictest "
               f"step). No format's 95% interval reaches above {pooled[widest].hi:+.4f} "
               f"({widest}'s upper limit): a larger benefit of ULP-aware updates over unbiased "
               "rounding is not supported at this scale.", ""])


def _cells_so_far(recs) -> list[str]:
    """Before the pooled model can be fitted: the completed primary cells' means per format x arm
    (descriptive; no contrast, no interval is claimed from them)."""
    prim = [r for r in recs if stats.is_primary_record(r, PRIMARY[0], PRIMARY_ARMS)]
    if not prim:
        return ["Not enough completed cells yet."]
    rows = [[f, *(_mean_cell(prim, f, arm, PRIMARY[0]) for arm in PRIMARY_ARMS)]
            for f in _order(r["format"] for r in prim)]
    return (["Not enough completed cells for the pooled model yet. The completed cells so far "
             "(mean ± 95% half-width, n seeds; descriptive only, no contrast is read from them):",
             ""] + _table(["format", *PRIMARY_ARMS], rows))


def _secondary(records) -> list[str]:
    lines = []
    for metric, label in SECONDARY:
        a = analyse_primary(records, metric, n_boot=500)
        lines += [f"### {label}", ""]
        if a is None:
            lines += ["Not enough completed cells.", ""]
            continue
        rows = [[f, _ci(c), f"{c.p_holm:.3g}"]
                for f, c in stats.by_format(a["contrasts"]["adamw_sr"]).items()]
        lines += _table(["format", "ulp_sr − adamw_sr [95% CI]", "Holm p"], rows) + [""]
        lines += [f"Best: {a['best']}; best − runner-up ({a['runner_up']}) "
                  f"{_ci(a['best_vs_runner_up'])}.", ""]
    return lines


def _mech_key(k: str) -> str:
    """The record key of mechanism figure ``k``: its tail mean (rank health: its last value)."""
    return f"mech/{k}/{'last' if k.startswith('rank') else 'tail'}"


def _mechanism(recs, formats, a: dict | None) -> list[str]:
    """Mechanism figures per format x arm, beside the format's benefit (ulp_sr − adamw_sr)."""
    benefit = {f: _ci(c) for f, c in stats.by_format(
        (a or {}).get("contrasts", {}).get(CONTROLS[0], [])).items()}
    rows = []
    for f in formats:
        for arm in ARMS:
            if any(r["format"] == f and r["arm"] == arm for r in recs):
                rows.append([f, arm, *(_mean_cell(recs, f, arm, _mech_key(k),
                                                  MECHANISM_DIGITS.get(k, 4))
                                       for k in MECHANISM_KEYS),
                             benefit.get(f, "—") if arm == TREATMENT else ""])
    return _table(["format", "arm", *MECHANISM_KEYS, "benefit ulp_sr − adamw_sr"], rows)


def _mechanism_link(recs, a: dict | None) -> list[str]:
    """Per mechanism figure of the control ``CONTROLS[0]`` (adamw_sr, tail mean): Spearman's rho
    across formats against the benefit ``TREATMENT`` − ``CONTROLS[0]`` (descriptive)."""
    if a is None:
        return []
    benefit = {f: c.estimate for f, c in stats.by_format(a["contrasts"][CONTROLS[0]]).items()}
    rows, found = [], {}
    for k in MECHANISM_KEYS:
        mech = {}
        for f in benefit:
            s = stats.mean_ci([v for r in recs if r["format"] == f and r["arm"] == CONTROLS[0]
                               and (v := value(r, _mech_key(k))) is not None])
            mech[f] = s.mean if s.n else None
        assoc = stats.rank_association(benefit, mech)
        if assoc is not None and assoc.constant:
            rows.append([k, "— (the same on every format)", "", ""])
        elif assoc is not None:
            rows.append([k, f"{assoc.rho:+.2f}", _p(assoc.p), assoc.n])
            found[k] = assoc
    if not rows:
        return ["Rank association with the benefit: needs at least 4 formats with the benefit "
                "and the figure.", ""]
    return ([f"Across formats, the benefit ({TREATMENT} − {CONTROLS[0]}) against each figure "
             f"of the control {CONTROLS[0]} (Spearman's rho, two-sided p; one point per format, "
             "descriptive, no multiplicity correction):", ""]
            + _table([f"{CONTROLS[0]} figure", "rho", "p", "formats"], rows) + [""]
            + _strongest(found))


def _strongest(found: dict) -> list[str]:
    """One sentence on the figure with the largest |rho| (none when no association exists)."""
    if not found:
        return []
    k = max(found, key=lambda key: abs(found[key].rho))
    a = found[k]
    way = "falls" if a.rho < 0 else "rises"
    p = _p(a.p) if a.p < 0.001 else f"= {_p(a.p)}"
    return [f"Strongest: the benefit {way} as the control's {MECHANISM_TITLES.get(k, k)} rises "
            f"(rho {a.rho:+.2f}, p {p}, {a.n} formats; descriptive, one of "
            f"{len(found)} figures ranked).", ""]


def _seeds12(recs) -> list[str]:
    fm = _order(r["format"] for r in recs if ARMS[r["arm"]].regime == "a" and r["format"] != "none"
                and r["arm"] in ("adamw", "manifold_gradient"))
    rows = []
    for f in fm:
        d = stats.paired_differences(recs, f, "manifold_gradient", "adamw", PRIMARY[0])
        rows.append([f, _mean_cell(recs, f, "adamw", PRIMARY[0]),
                     _mean_cell(recs, f, "manifold_gradient", PRIMARY[0]),
                     _paired_ci(d)])
    return _table_or_none(["format", "adamw", "manifold_gradient",
                           "difference (paired) [95% CI]"], rows)


PER_TENSOR_ARMS = ("tensor_sr", "grid")  # the per_tensor stage's arms


def _per_tensor(recs) -> list[str]:
    """tensor_sr (the ULP step at the tensor's median spacing) and grid (the grid optimizer)
    beside the primary arms on the same formats and seeds, with paired differences: per-tensor
    vs per-element ULP scaling (tensor_sr − ulp_sr) and the grid optimizer vs unbiased rounding
    (grid − adamw_sr)."""
    fm = _order(r["format"] for r in recs if r["arm"] in PER_TENSOR_ARMS)
    rows = []
    for f in fm:
        rows.append([f, *(_mean_cell(recs, f, a, PRIMARY[0])
                          for a in ("adamw_sr", "ulp_sr") + PER_TENSOR_ARMS),
                     _paired_ci(stats.paired_differences(recs, f, "tensor_sr", TREATMENT,
                                                         PRIMARY[0])),
                     _paired_ci(stats.paired_differences(recs, f, "grid", CONTROLS[0],
                                                         PRIMARY[0]))])
    return _table_or_none(["format", "adamw_sr", "ulp_sr", "tensor_sr", "grid",
                           "tensor_sr − ulp_sr (paired) [95% CI]",
                           "grid − adamw_sr (paired) [95% CI]"], rows)


def _e1m6_twin(r: dict, recs) -> dict | None:
    """The E0M7 cell of E1M6 record ``r`` (same arm, seed and factor), from ``r``'s own stage if
    it has one there (run beside it, on the same machine), else from any stage."""
    twins = [t for t in recs if t["format"] == "E0M7" and t["arm"] == r["arm"]
             and t["seed"] == r["seed"] and t.get("factor") == r.get("factor")]
    twins.sort(key=lambda t: t.get("stage") != r.get("stage"))
    return twins[0] if twins else None


def _bit_identical(a: dict, b: dict) -> bool:
    """Every metric but the throughputs and every curve point equal, to the last bit."""
    ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
    keys = [k for k in set(ma) | set(mb) if not k.endswith("samples_per_s")]
    return (all(ma.get(k) == mb.get(k) for k in keys)
            and (a.get("curve") or {}) == (b.get("curve") or {}))


def _e1m6(recs) -> list[str]:
    """E1M6 beside its E0M7 twin: under amax scaling the same quantized tensors, so the same run
    bit for bit when both ran on one machine (XLA's CPU code differs between CPU kinds)."""
    rows, same = [], []
    arm_order = list(ARMS)
    for r in sorted((r for r in recs if r["format"] == "E1M6"),
                    key=lambda r: (str(r.get("stage")), r["seed"], arm_order.index(r["arm"]))):
        twin = _e1m6_twin(r, recs)
        if twin is None:
            continue
        a, b = value(r, PRIMARY[0]), value(twin, PRIMARY[0])
        la, lb = value(r, "test/loss"), value(twin, "test/loss")
        ma, mb = machine_name(r), machine_name(twin)
        ident = _bit_identical(r, twin)
        same.append((r["arm"], ident))
        rows.append([r.get("stage", "?"), r["arm"], r["seed"], twin.get("stage", "?"), _f(a),
                     _f(b), _f(abs(a - b) if None not in (a, b) else None, 6),
                     _f(abs(la - lb) if None not in (la, lb) else None, 6),
                     "yes" if ident else "no", ma if ma == mb else f"{ma} / {mb}"])
    lines = _table_or_none(["stage", "arm", "seed", "E0M7 twin's stage", "E1M6", "E0M7",
                            "|Δ macro-F1|", "|Δ test loss|", "bit-identical",
                            "machine (E1M6 / E0M7)"], rows)
    if same:
        lines += ["", f"Bit-identical (every metric but throughput and every logged training "
                      f"loss equal to the last bit): {sum(i for _, i in same)} of {len(same)} "
                      "pairs."]
    if ("manifold_gradient", False) in same:
        lines += ["", "manifold_gradient differs by design: the seeds' stiffness "
                      "(`optim.scale_by_stiffness`) is the spacing of the unscaled weight's "
                      "binade, not of the scaled grid, so on E1M6 it follows |w| "
                      "(2^(floor(log2|w|) − 6)) while on E0M7 it is the constant 1/128; after "
                      "Adam that changes the effective epsilon (eps/S) and adds transients at "
                      "binade edges. The seeds' algorithm thus depends on how a grid is "
                      "labelled, not only on the grid (every other arm reads the scaled grid)."]
    return lines


def _tuning(recs, plan) -> list[str]:
    rows = []
    tuning = sorted((r for r in recs if r.get("factor")), key=lambda r: (
        r["arm"], r["format"], float(fractions.Fraction(r["factor"]))))
    for r in tuning:
        rows.append([r["arm"], r["format"], r["factor"], (r.get("applied") or {}).get("field", ""),
                     _f(value(r, "applied/value"), 5), _f(value(r, "eval_tuned/macro_f1")),
                     _f(value(r, _mech_key("diag/flips")), 0),
                     _f(value(r, _mech_key("rank/effective_mean")), 1)])
    chosen = (plan or {}).get("chosen", {})
    lines = _table(["arm", "format", "factor", "field", "value", "val macro-F1 (tuned thr.)",
                    "kernel weights moved (tail)", "effective rank (last)"], rows)
    lines += ["", "Chosen factors: " + (", ".join(f"{k} x{v}" for k, v in chosen.items())
                                        or "none yet") + "."]
    edges = _bracket_edges(recs, chosen)
    if edges:
        lines += ["", "**At the edge of the bracket** (the best factor is the largest or smallest "
                  "tried, so the arm's optimum may lie outside it and the arm may be "
                  "under-tuned relative to the others): " + ", ".join(edges) + "."]
    return lines


def _code_caveats(recs) -> tuple[str, ...]:
    """Caveats read from the records' ``code`` facts (what changed between stretches)."""
    old = sorted(r["name"] for r in recs
                 if (r.get("code") or {}).get("dropout_impl", "threefry") == "threefry")
    if not old or len(old) == len(recs):
        return ()
    return (f"Dropout masks: {', '.join(f'`{n}`' for n in old)} trained with threefry masks "
            "(`flax.linen.Dropout`), every other run with the counter-based masks "
            "(`model.dropout_impl='hash'`, 1.2x faster): the same Bernoulli distribution, a "
            "different random stream. "
            + ("All of them are tuning runs (seed 0), outside the test analysis."
               if all(r.get("seed") == 0 for r in recs if r["name"] in old) else
               "Some are test-set runs: compare them with care."),)


FULL_SCALE_FLOP_RATIO = 1313.6 / 12.19  # the seeds' full scale vs the CPU scale, per step


def _cost(all_recs, study: str = "study_cpu") -> list[str]:
    """What the study has cost so far, measured from the records' perf (one run per core); the
    dry-run command names ``configs/<study>.py``."""
    done = [r for r in all_recs.values() if r.get("status") == "completed"]
    reused = sum(1 for r in done if r.get("reused_from"))
    walls = [v for r in done if (v := value(r, "perf/wall_time_s")) is not None]
    sps = cost_lib.measured_sec_per_step(all_recs)
    if not walls or sps is None:
        return ["No completed run with throughput figures yet."]
    mean_wall = sum(walls) / len(walls)
    # Records written before the wall time was carried across a resume count the last process
    # only; one that resumed shows it by a wall time below its (cumulative) training time.
    short = sum(1 for r in done if value(r, "perf/processes") is None
                and (value(r, "perf/wall_time_s") or 0.0) < (value(r, "perf/train_time_s") or 0.0))
    bound = (f" (a lower bound: {short} of these runs resumed before the wall time was carried "
             "across processes, so theirs is their last process's only)" if short else "")
    return [f"{len(walls)} completed runs: median {sps:.2f} s per training step (two runs side by "
            f"side, one per core; training time only), mean wall time {mean_wall / 60:.1f} min "
            f"per run (compile, data, evaluations included), {sum(walls) / 3600:.1f} core-hours "
            f"in all{bound}. The seeds' full scale is "
            f"{FULL_SCALE_FLOP_RATIO:.0f}x the FLOPs per step: at this rate about "
            f"{sps * FULL_SCALE_FLOP_RATIO * 1000 / 3600:.0f} core-hours per 1,000-step run, "
            "out of reach on this CPU (the cost plan of the remaining cells: "
            f"`python sweep.py --config=configs/{study}.py --dry_run`)."
            + (f" {reused} of these runs were trained by another study and their records "
               "reused here (`reused_from`: the same program, checked field by field)."
               if reused else "")]


def machine_name(r: dict) -> str:
    """The machine a record names (its ``environment``: the process that ended the run)."""
    env = r.get("environment") or {}
    if not env:
        return "not recorded"
    return (f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores, "
            f"{env.get('backend', '?')}: {env.get('device_kind', '?')}; jax "
            f"{(env.get('versions') or {}).get('jax', '?')})")


def _machines(recs) -> list[str]:
    """How many completed runs each machine ran, and the paired groups (one stage, format and
    seed: the cells a per-format contrast compares) whose records name more than one."""
    counts = collections.Counter(machine_name(r) for r in recs)
    if not counts:
        return []
    lines = ["Machines named by the records (the process that ended each run; \"not recorded\": "
             "the record predates the field): "
             + "; ".join(f"{k}: {n} run{'s' if n != 1 else ''}" for k, n in sorted(counts.items()))
             + "."]
    groups = collections.defaultdict(set)
    for r in recs:
        if r.get("factor") is None and int(r["seed"]) != 0:
            groups[(r.get("stage"), r["format"], r["seed"])].add(machine_name(r))
    known = {g: m for g, m in groups.items() if "not recorded" not in m}
    split = sorted(f"{st} {f} seed {s}" for (st, f, s), m in known.items() if len(m) > 1)
    if known:
        lines += ["", f"Paired groups (stage, format, seed) whose records all name a machine: "
                      f"{len(known)}; of these, run on more than one machine: "
                      + (", ".join(split) if split else "none") + "."]
    return lines


def _amendments(plan) -> list[str]:
    """The study config's ``amendments`` (changes to the protocol after the study started, each
    saying which cells had run), as their own section; nothing when there are none."""
    items = [str(a) for a in ((plan or {}).get("config") or {}).get("amendments") or ()]
    if not items:
        return []
    return (["## Protocol amendments", "",
             "Changes made after the first cell ran, in order, with the cells they affect "
             "(from the study config's `amendments`):", ""]
            + [f"{i}. {a}" for i, a in enumerate(items, start=1)] + [""])


def _bracket_edges(recs, chosen: dict) -> list[str]:
    """``"<arm> x<factor>"`` for each chosen factor that is the smallest or largest tried."""
    out = []
    for arm, factor in chosen.items():
        tried = {r["factor"] for r in recs if r.get("arm") == arm and r.get("factor")}
        values = sorted(tried, key=lambda f: float(fractions.Fraction(f)))
        if len(values) > 1 and factor in (values[0], values[-1]):
            out.append(f"{arm} x{factor}")
    return out


def _status(all_recs, plan) -> tuple[list[str], int, int]:
    """A table of cells per stage (planned, completed, stopped, not run), the stopped runs by
    name and reason, the names of the cells not run yet (folded); and the primary counts."""
    planned = [c for c in (plan or {}).get("cells", [])]
    names = {c["name"] for c in planned} | set(all_recs)
    done = {n for n, r in all_recs.items() if r.get("status") == "completed"}
    prim = [c["name"] for c in planned if c.get("stage") == stats.PRIMARY_STAGE]
    order = [c["name"] for c in planned] + sorted(set(all_recs) - {c["name"] for c in planned})
    stage_of = {c["name"]: c.get("stage", "?") for c in planned}
    stage_of.update({n: all_recs[n].get("stage", "?") for n in all_recs if n not in stage_of})
    stopped = [n for n in order if n in all_recs and n not in done]
    missing: dict[str, list[str]] = {}
    for n in order:
        if n not in all_recs:
            missing.setdefault(stage_of[n], []).append(n)
    stages = list(dict.fromkeys(stage_of[n] for n in order))
    rows = [[st, sum(stage_of[n] == st for n in order), sum(stage_of[n] == st for n in done),
             sum(stage_of[n] == st for n in stopped), len(missing.get(st, []))] for st in stages]
    lines = [f"Cells: {len(names)} planned or recorded, {len(done)} completed.", ""]
    lines += _table(["stage", "cells", "completed", "stopped", "not run yet"], rows)
    if stopped:
        lines += ["", "Stopped (excluded from every table):", ""]
    for n in stopped:
        r = all_recs[n]
        lines.append(f"- `{n}`: {r.get('status', '?')} at step {r.get('step')}"
                     + (f": {r.get('reason')}" if r.get("reason") else ""))
    if missing:
        lines += ["", f"<details><summary>The {sum(map(len, missing.values()))} cells not run "
                  "yet (excluded from every table)</summary>", ""]
        lines += [f"- stage {stage}, {len(ns)} not run yet: " + ", ".join(f"`{n}`" for n in ns)
                  for stage, ns in missing.items()]
        lines += ["", "</details>"]
    return lines, len([n for n in prim if n in done]), len(prim)


def _interim_note(seeds: list[int] | None, a: dict | None) -> str:
    if seeds is None or a is None:
        return ""
    return ("**Interim** (the primary stage has not finished; the fit below uses the complete "
            f"seed blocks only, seeds {', '.join(map(str, seeds))}: every cell of those seeds, "
            "and nothing of a seed still running; the answer is the fit on every seed). ")


def interim_seeds(all_recs: dict, plan: dict | None) -> list[int] | None:
    """The seeds an interim analysis may use, or None once the primary stage has finished.

    While a planned primary cell has no record yet, the pooled model is fitted on the complete
    seed blocks only: the seeds whose every planned primary cell has finished (completed or
    diverged). Every format then enters with the same seeds, so an interim contrast never
    compares a format seen at two seeds with one seen at one, and no figure is read from a
    model with a residual degree of freedom or two. Once every planned primary cell has a
    record (or without a plan) every seed enters: the pre-registered analysis.
    """
    cells = [c for c in (plan or {}).get("cells", []) if c.get("stage") == stats.PRIMARY_STAGE]
    if all(c["name"] in all_recs for c in cells):
        return None
    seeds = sorted({int(c["seed"]) for c in cells})
    return [s for s in seeds if all(c["name"] in all_recs for c in cells if int(c["seed"]) == s)]


@dataclasses.dataclass
class _Study:
    """What one report is built from: the plan, every record by name, the completed ones, the
    completed test-seed ones, the records the primary fit may use (`interim_seeds`) and the
    primary analysis (None until the model fits)."""

    plan: dict | None
    all_recs: dict
    recs: list
    test_recs: list
    fit_recs: list
    seeds: list | None
    a: dict | None
    t: dict | None = None  # the format-tuned analysis (`analyse_format_tuned`)


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
            return ((format_tuned_paragraph(st.t) if st.t else
                     "**Not answerable yet**: the format-tuned pooled model needs both arms on "
                     "at least two formats, with residual degrees of freedom left.")
                    + f" ({k} of {n} {FORMAT_TUNED_STAGE} cells completed.)")
        return ("**No primary stage in this study's plan** (an exploratory study, outside the "
                "pre-registered analysis): its results are the tables below (stages: "
                + ", ".join(sorted(str(x) for x in stages)) + ").")
    return _interim_note(st.seeds, st.a) + answer_paragraph(st.a, n_done, n_planned)


def _answer_sections(st: _Study, title: str) -> list[str]:
    """The answer, the status, the primary contrast with its checks, the secondary metrics and
    the mechanism."""
    status_lines, n_done, n_planned = _status(st.all_recs, st.plan)
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
    lines += (_primary_table(a, st.fit_recs) if a else _cells_so_far(st.test_recs)) + [""]
    if a:
        lines += ["### Model checks, sensitivity and power", ""] + _checks(a, st.fit_recs)
    lines += ["## Secondary metrics", ""] + _secondary(st.fit_recs)
    mech_recs = st.fit_recs if a else st.test_recs  # beside the benefit: the records of its fit
    lines += ["## Mechanism (tail mean over the last 20% of diagnostics steps; rank: last)", "",
              "Fraction of updates below half a grid step, mean |grid steps| moved per updated "
              "coordinate, stall ratio, flips and updates per diagnostics step, effective rank.",
              ""] + _mechanism(mech_recs, _formats(st), a) + [""] + _mechanism_link(mech_recs, a)
    return lines


def _other_sections(st: _Study) -> list[str]:
    """The seeds' 12 conditions, E1M6, the references, tuning, amendments, cost and caveats."""
    lines, chosen = [], (st.plan or {}).get("chosen", {})
    if st.t is not None or any(c.get("stage") == FORMAT_TUNED_STAGE
                               for c in (st.plan or {}).get("cells", [])):
        lines += ["## Each format tuned on its own (stage format_tuned)", "",
                  "Each arm's factor chosen per format from that format's own tuning cells "
                  "(`tuning_scope='format'`); the same pooled model on the two arms.", ""]
        lines += _format_tuned(st.t, chosen) + [""]
    lines += ["## The seeds' 12 conditions (regime a)", ""]
    if any(a in chosen for a in ("adamw", "manifold_gradient")):
        lines += ["Each arm at its own tuned factor (the Tuning section): "
                  + ", ".join(f"{a} x{chosen[a]}" for a in ("adamw", "manifold_gradient")
                              if a in chosen)
                  + "; gradient-mode ManifoldAdamW is AdamW with epsilon eps/S (Caveats), so a "
                    "difference here is the tuned learning rate's and epsilon's, not the "
                    "geometry's.", ""]
    lines += _seeds12(st.test_recs) + [""]
    lines += ["## E1M6 next to E0M7", ""] + _e1m6(st.recs) + [""]
    lines += ["## Per-tensor scaling and the grid optimizer (stage per_tensor)", "",
              f"Metric: {PRIMARY[1]}; the adamw_sr and ulp_sr columns are the primary stage's "
              "cells of the same formats and seeds (paired by seed; t on n − 1 df, no "
              "multiplicity correction). On E0M7 the grid is uniform, so tensor_sr's median "
              "spacing is every weight's spacing: the same steps as ulp_sr's.", ""]
    lines += _per_tensor(st.test_recs) + [""]
    lines += ["## References (FP32, BF16)", ""] + _references(st.test_recs) + [""]
    lines += ["## Tuning (seed 0)", ""] + _tuning(st.recs, st.plan) + [""]
    lines += _amendments(st.plan)
    lines += ["## Cost", ""] + _cost(st.all_recs, (st.plan or {}).get("study") or "study_cpu")
    lines += [""] + _machines(st.recs) + [""]
    return lines + ["## Caveats", ""] + [f"- {c}" for c in CAVEATS + _code_caveats(st.recs)] + [""]


def _references(recs) -> list[str]:
    """FP32 AdamW and the BF16 rows, and BF16's own paired contrasts (its seeds alone)."""
    refs = [[f, arm, _mean_cell(recs, f, arm, PRIMARY[0])]
            for f in ("none", "BF16") for arm in ("adamw",) + PRIMARY_ARMS
            if any(r["format"] == f and r["arm"] == arm for r in recs)]
    lines = _table_or_none(["format", "arm", PRIMARY[1]], refs)
    pairs = [(TREATMENT, CONTROLS[0]), (TREATMENT, CONTROLS[1]), (CONTROLS[0], CONTROLS[1])]
    diffs = [(t, c, stats.paired_differences(recs, "BF16", t, c, PRIMARY[0])) for t, c in pairs]
    if any(d.n >= 2 for _, _, d in diffs):
        lines += ["", "BF16, paired by seed (its seeds alone, t on n − 1 df; outside the pooled "
                      "8-bit model): " + "; ".join(f"{t} − {c} {_paired_ci(d)} (n={d.n})"
                                                   for t, c, d in diffs if d.n >= 2) + "."]
    return lines


def _formats(st: _Study) -> list[str]:
    return _order(r["format"] for r in st.test_recs)


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
