"""The study's answer: the pre-registered analysis of the primary contrast (`analyse_primary`),
the format-tuned sensitivity analysis (`analyse_format_tuned`), and the report's text built from
them: the first paragraph, the primary table, the model checks and the secondary metrics.

The metric is `PRIMARY` (test macro-F1 at the validation-tuned threshold); the treatment is
``TREATMENT`` (ulp_sr) against the controls ``CONTROLS`` (adamw_sr first, then adamw_rtn), on
one pooled OLS model (`altgrad_jax.analysis.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from altgrad_jax.analysis import markdown as md
from altgrad_jax.analysis import stats
from altgrad_jax.analysis import tuning as tuning_lib
from altgrad_jax.analysis.matrix import CONTROLS, PRIMARY_ARMS, TREATMENT
from altgrad_jax.analysis.records import value


PRIMARY = ("test_tuned/macro_f1", "test macro-F1 (tuned threshold)")


SECONDARY = (("test_tuned/micro_f1", "test micro-F1 (tuned threshold)"),
             ("test/pr_auc_micro", "test micro PR-AUC"))


FORMAT_TUNED_STAGE = "format_tuned"  # test cells at each (arm, format)'s own tuned factor


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
    fit = stats.fit_pooled(df, PRIMARY_ARMS, formats=md.format_order(df["format"]))
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
    fit = stats.fit_pooled(df, arms, formats=md.format_order(df["format"]))
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
            f"{PRIMARY[1]}) is on **{best}**, {md.ci(by_f[best])} (95% CI; Holm p = "
            f"{by_f[best].p_holm:.3g}), **{verdict}** the runner-up ({t['runner_up']}: best − "
            f"runner-up {md.ci(bvr)}). Holm-significant: {', '.join(sig) or 'none'}. Trend per "
            f"exponent bit: {md.ci(t['trend'])}. (Pooled OLS on the two arms, "
            f"{t['fit'].res.df_resid:.0f} residual df.)")


def format_tuned_table(t: dict | None, chosen: dict) -> list[str]:
    """The format-tuned contrast table: per format each arm's own factor and the benefit."""
    if t is None:
        return ["Not enough completed cells for the pooled model yet."]
    arms = (CONTROLS[0], TREATMENT)
    rows = [[f, *(tuning_lib.choice_for(chosen, arm, f) or "—" for arm in arms), md.ci(c),
             f"{c.p_holm:.3g}"] for f, c in stats.by_format(t["contrasts"]).items()]
    mc = t["checks"]
    return md.table(["format", f"{CONTROLS[0]} factor", f"{TREATMENT} factor",
                     f"{TREATMENT} − {CONTROLS[0]} [95% CI]", "Holm p"], rows) + [
        "", f"Best − runner-up ({t['best']} − {t['runner_up']}): {md.ci(t['best_vs_runner_up'])}. "
            f"Residual spread equal across formats: Brown–Forsythe p = {md.p_value(mc.spread_p)}; "
            f"residuals normal: Shapiro–Wilk p = {md.p_value(mc.normal_p)}."]


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
            f"{PRIMARY[1]}): **{best}**, {md.ci(b)} (95% CI; Holm p = {b.p_holm:.3g}); against "
            f"naive rounding (ulp_sr − adamw_rtn) {md.ci(rtn[best])}.")
    if bvr.excludes_zero and bvr.estimate > 0:
        verdict = (f" **{best} benefits most**: best − runner-up ({second}) = {md.ci(bvr)}, "
                   f"bootstrap P({best} is the winner) = {a['p_winner'][best]:.2f}.")
    else:
        verdict = (f" **The winner is not distinguishable** from the runner-up ({second}): best − "
                   f"runner-up = {md.ci(bvr)} includes 0 (bootstrap P({best} is the winner) = "
                   f"{a['p_winner'][best]:.2f}).")
    g = a["gap"].get((best, TREATMENT), float("nan"))
    gap = (f" On {best} ulp_sr closes G = {g:.2f} of the adamw_rtn-to-FP32 gap (adamw_sr: "
           f"{a['gap'].get((best, CONTROLS[0]), float('nan')):.2f})." if math.isfinite(g) else "")
    count = gap + (f" Formats with a Holm-significant positive benefit: "
                   f"{', '.join(sig) if sig else 'none'} (per format the design detects a true "
                   f"benefit of {a['mde']:.4f} with 80% power at α = 0.05, {a['mde_holm']:.4f} "
                   f"at Holm's strictest α/{len(a['fit'].formats)}). Trend of the benefit per "
                   f"exponent bit: {md.ci(a['trend'])}.")
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
            f"{md.p_value(mc.spread_p)}), so the same contrasts with each format's own "
            f"variance (its own model, t on {alone[0].df:.0f} df, Holm): {a['best']} "
            + (md.ci(best) if best else "—")
            + (f", best − runner-up {md.ci(bvr)} (Welch–Satterthwaite, {bvr.df:.1f} df)"
               if bvr is not None and math.isfinite(bvr.df) else "")
            + f"; Holm-significant: {', '.join(own) or 'none'}"
            + (f" (in the pooled model only: {', '.join(lost)})" if lost else "")
            + (f"; trend {md.ci(trend)} (Welch–Satterthwaite, {trend.df:.1f} df)." if trend
               else "."))


def primary_table(a: dict, recs) -> list[str]:
    rows = []
    c_sr = stats.by_format(a["contrasts"]["adamw_sr"])
    c_rtn = stats.by_format(a["contrasts"]["adamw_rtn"])
    for f in a["fit"].formats:
        rows.append([f, *(md.mean_cell(recs, f, arm, PRIMARY[0]) for arm in PRIMARY_ARMS),
                     md.ci(c_sr[f]), f"{c_sr[f].p_holm:.3g}", md.ci(c_rtn[f]),
                     f"{c_rtn[f].p_holm:.3g}", md.number(a["gap"].get((f, "adamw_sr")), 2),
                     md.number(a["gap"].get((f, "ulp_sr")), 2), f"{a['p_winner'][f]:.2f}"])
    return md.table(["format", *PRIMARY_ARMS, "ulp_sr − adamw_sr [95% CI]", "Holm p",
                     "ulp_sr − adamw_rtn [95% CI]", "Holm p", "G adamw_sr", "G ulp_sr",
                     "P(winner)"], rows)


def checks_text(a: dict, recs) -> list[str]:
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
        rows.append([f, md.ci(pooled[f]), f"{pooled[f].p_holm:.3g}",
                     "—" if own is None else f"{md.ci(own)} ({own.df:.0f} df)",
                     "—" if own is None else f"{own.p_holm:.3g}",
                     md.paired_ci(d) + (f" (n={d.n})" if d.n >= 2 else ""),
                     f"{mc.sd_by_format[f]:.4f}"])
    se, mde, mde_holm, df_resid = a["se"], a["mde"], a["mde_holm"], float(fit.res.df_resid)
    widest = max(pooled, key=lambda f: pooled[f].hi)
    trend = a["alone_trend"]
    return (md.table(["format", f"{TREATMENT} − {control}, pooled model [95% CI]", "Holm p",
                      "this format's own model and variance [95% CI]", "Holm p",
                      "its seeds alone, paired [95% CI]", "residual SD"], rows)
            + ["", f"Residual spread the same in every format (the pooled model assumes it): "
               f"Brown–Forsythe p = {md.p_value(mc.spread_p)}; residuals normal (the t "
               f"intervals assume it): Shapiro–Wilk p = {md.p_value(mc.normal_p)} "
               f"({len(fit.frame)} residuals, residual SD {mc.resid_sd:.4f}, {df_resid:.0f} "
               "df). The own-model column fits "
               "`y ~ C(arm) + C(seed)` on each format's cells alone (`stats."
               "format_alone_contrasts`: its own residual variance, exact t on its own df); "
               "the paired column drops the model altogether (the format's own seeds, t on "
               "n − 1 df), at the price of width."
               + (f" Trend per exponent bit with the formats' own variances: {md.ci(trend)} "
                  f"(Welch–Satterthwaite, {trend.df:.1f} df; pooled: {md.ci(a['trend'])})."
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


def cells_so_far(recs) -> list[str]:
    """Before the pooled model can be fitted: the completed primary cells' means per format x arm
    (descriptive; no contrast, no interval is claimed from them)."""
    prim = [r for r in recs if stats.is_primary_record(r, PRIMARY[0], PRIMARY_ARMS)]
    if not prim:
        return ["Not enough completed cells yet."]
    rows = [[f, *(md.mean_cell(prim, f, arm, PRIMARY[0]) for arm in PRIMARY_ARMS)]
            for f in md.format_order(r["format"] for r in prim)]
    return (["Not enough completed cells for the pooled model yet. The completed cells so far "
             "(mean ± 95% half-width, n seeds; descriptive only, no contrast is read from them):",
             ""] + md.table(["format", *PRIMARY_ARMS], rows))


def secondary_metrics(records) -> list[str]:
    lines = []
    for metric, label in SECONDARY:
        a = analyse_primary(records, metric, n_boot=500)
        lines += [f"### {label}", ""]
        if a is None:
            lines += ["Not enough completed cells.", ""]
            continue
        rows = [[f, md.ci(c), f"{c.p_holm:.3g}"]
                for f, c in stats.by_format(a["contrasts"]["adamw_sr"]).items()]
        lines += md.table(["format", "ulp_sr − adamw_sr [95% CI]", "Holm p"], rows) + [""]
        lines += [f"Best: {a['best']}; best − runner-up ({a['runner_up']}) "
                  f"{md.ci(a['best_vs_runner_up'])}.", ""]
    return lines
