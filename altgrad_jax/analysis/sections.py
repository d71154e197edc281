"""The report's sections beside the answer: the mechanism per format and its rank association
with the benefit, the seeds' 12 conditions, E1M6 next to E0M7, per-tensor scaling and the grid
optimizer, the references (FP32, BF16) and the tuning table. Each returns markdown lines."""

from __future__ import annotations

import fractions
import math

from altgrad_jax.analysis import markdown as md
from altgrad_jax.analysis import provenance
from altgrad_jax.analysis import stats
from altgrad_jax.analysis.answer import PRIMARY
from altgrad_jax.analysis.matrix import ARMS, CONTROLS, PRIMARY_ARMS, TREATMENT
from altgrad_jax.analysis.records import MECHANISM_KEYS, MECHANISM_TITLES, value


MECHANISM_DIGITS = {"diag/flips": 1, "diag/updates": 0, "rank/effective_mean": 2}  # counts, ranks


def _mech_key(k: str) -> str:
    """The record key of mechanism figure ``k``: its tail mean (rank health: its last value)."""
    return f"mech/{k}/{'last' if k.startswith('rank') else 'tail'}"


def mechanism_table(recs, formats, a: dict | None) -> list[str]:
    """Mechanism figures per format x arm, beside the format's benefit (ulp_sr − adamw_sr)."""
    benefit = {f: md.ci(c) for f, c in stats.by_format(
        (a or {}).get("contrasts", {}).get(CONTROLS[0], [])).items()}
    rows = []
    for f in formats:
        for arm in ARMS:
            if any(r["format"] == f and r["arm"] == arm for r in recs):
                rows.append([f, arm, *(md.mean_cell(recs, f, arm, _mech_key(k),
                                                    MECHANISM_DIGITS.get(k, 4))
                                       for k in MECHANISM_KEYS),
                             benefit.get(f, "—") if arm == TREATMENT else ""])
    return md.table(["format", "arm", *MECHANISM_KEYS, "benefit ulp_sr − adamw_sr"], rows)


def mechanism_link(recs, a: dict | None) -> list[str]:
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
            rows.append([k, f"{assoc.rho:+.2f}", md.p_value(assoc.p), assoc.n])
            found[k] = assoc
    if not rows:
        return ["Rank association with the benefit: needs at least 4 formats with the benefit "
                "and the figure.", ""]
    return ([f"Across formats, the benefit ({TREATMENT} − {CONTROLS[0]}) against each figure "
             f"of the control {CONTROLS[0]} (Spearman's rho, two-sided p; one point per format, "
             "descriptive, no multiplicity correction):", ""]
            + md.table([f"{CONTROLS[0]} figure", "rho", "p", "formats"], rows) + [""]
            + _strongest(found))


def _strongest(found: dict) -> list[str]:
    """One sentence on the figure with the largest |rho| (none when no association exists)."""
    if not found:
        return []
    k = max(found, key=lambda key: abs(found[key].rho))
    a = found[k]
    way = "falls" if a.rho < 0 else "rises"
    p = md.p_value(a.p) if a.p < 0.001 else f"= {md.p_value(a.p)}"
    return [f"Strongest: the benefit {way} as the control's {MECHANISM_TITLES.get(k, k)} rises "
            f"(rho {a.rho:+.2f}, p {p}, {a.n} formats; descriptive, one of "
            f"{len(found)} figures ranked).", ""]


def seeds12_section(recs, chosen: dict) -> list[str]:
    """adamw and manifold_gradient per regime-(a) format (each at its own factor in ``chosen``,
    the plan's choices), their paired difference with the paired t test's p, Holm-adjusted
    across the table's formats."""
    arms = ("adamw", "manifold_gradient")
    lines = []
    if any(a in chosen for a in arms):
        lines += ["Each arm at its own tuned factor (the Tuning section): "
                  + ", ".join(f"{a} x{chosen[a]}" for a in arms if a in chosen)
                  + "; gradient-mode ManifoldAdamW is AdamW with epsilon eps/S (Caveats), so a "
                    "difference here is the tuned learning rate's and epsilon's, not the "
                    "geometry's.", ""]
    lines += [f"Metric: {PRIMARY[1]}; difference manifold_gradient − adamw paired by seed (t on "
              "n − 1 df), Holm across the table's formats.", ""]
    fm = md.format_order(r["format"] for r in recs if ARMS[r["arm"]].regime == "a"
                         and r["format"] != "none" and r["arm"] in arms)
    diffs = [stats.paired_differences(recs, f, "manifold_gradient", "adamw", PRIMARY[0])
             for f in fm]
    rows = [[f, md.mean_cell(recs, f, "adamw", PRIMARY[0]),
             md.mean_cell(recs, f, "manifold_gradient", PRIMARY[0]), md.paired_ci(d),
             md.p_or_dash(d.p), md.p_or_dash(h)]
            for f, d, h in zip(fm, diffs, stats.holm_p([d.p for d in diffs]))]
    return lines + md.table_or_none(["format", "adamw", "manifold_gradient",
                                     "difference (paired) [95% CI]", "p (paired t)", "Holm p"],
                                    rows)


PER_TENSOR_ARMS = ("tensor_sr", "grid")  # the per_tensor stage's arms
PER_TENSOR_CONTRASTS = (("tensor_sr", TREATMENT), ("grid", CONTROLS[0]))


def per_tensor_section(recs, chosen: dict) -> list[str]:
    """tensor_sr (the ULP step at the tensor's median spacing) and grid (the grid optimizer)
    beside the primary arms on the same formats and seeds, with paired differences: per-tensor
    vs per-element ULP scaling (tensor_sr − ulp_sr) and the grid optimizer vs unbiased rounding
    (grid − adamw_sr), each with its paired t test's p Holm-adjusted across every difference
    of the table. ``chosen``: the plan's factors, named where tensor_sr and ulp_sr differ by
    design only in the step."""
    factors = ("tensor_sr", "ulp_sr")
    note = (" (" + " vs ".join(f"x{chosen[a]}" for a in factors) + ")"
            if all(a in chosen for a in factors) else "")
    lines = [f"Metric: {PRIMARY[1]}; the adamw_sr and ulp_sr columns are the primary stage's "
             "cells of the same formats and seeds (paired by seed; t on n − 1 df, Holm across "
             "the table's differences). On E0M7 the grid is uniform, so tensor_sr's median "
             "spacing is every weight's spacing: there tensor_sr is ulp_sr at its own tuned "
             f"factor{note}, so its E0M7 difference is the step size's, not the scaling's. The "
             "per_tensor cells ran stretches after the primary cells they are paired with, "
             "possibly on another kind of box (Cost section): last-bit differences between "
             "machines enter these differences as noise, not as an effect of the arm.", ""]
    fm = md.format_order(r["format"] for r in recs if r["arm"] in PER_TENSOR_ARMS)
    diffs = [stats.paired_differences(recs, f, t, c, PRIMARY[0])
             for f in fm for t, c in PER_TENSOR_CONTRASTS]
    cells = [md.paired_ci(d) + (f" (Holm p {md.p_value(h)})" if math.isfinite(h) else "")
             for d, h in zip(diffs, stats.holm_p([d.p for d in diffs]))]
    k = len(PER_TENSOR_CONTRASTS)  # cells[i * k:(i + 1) * k] are format i's differences
    rows = [[f, *(md.mean_cell(recs, f, a, PRIMARY[0])
                  for a in ("adamw_sr", "ulp_sr") + PER_TENSOR_ARMS),
             *cells[i * k:(i + 1) * k]] for i, f in enumerate(fm)]
    return lines + md.table_or_none(["format", "adamw_sr", "ulp_sr", "tensor_sr", "grid",
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


def e1m6_table(recs) -> list[str]:
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
        ma, mb = provenance.machine_name(r), provenance.machine_name(twin)
        ident = _bit_identical(r, twin)
        same.append((r["arm"], ident))
        rows.append([r.get("stage", "?"), r["arm"], r["seed"], twin.get("stage", "?"), md.number(a),
                     md.number(b), md.number(abs(a - b) if None not in (a, b) else None, 6),
                     md.number(abs(la - lb) if None not in (la, lb) else None, 6),
                     "yes" if ident else "no", ma if ma == mb else f"{ma} / {mb}"])
    lines = md.table_or_none(["stage", "arm", "seed", "E0M7 twin's stage", "E1M6", "E0M7",
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


def tuning_table(recs, plan) -> list[str]:
    rows = []
    tuning = sorted((r for r in recs if r.get("factor")), key=lambda r: (
        r["arm"], r["format"], float(fractions.Fraction(r["factor"]))))
    for r in tuning:
        rows.append([r["arm"], r["format"], r["factor"], (r.get("applied") or {}).get("field", ""),
                     md.number(value(r, "applied/value"), 5),
                     md.number(value(r, "eval_tuned/macro_f1")),
                     md.number(value(r, _mech_key("diag/flips")), 0),
                     md.number(value(r, _mech_key("rank/effective_mean")), 1)])
    chosen = (plan or {}).get("chosen", {})
    lines = md.table(["arm", "format", "factor", "field", "value", "val macro-F1 (tuned thr.)",
                      "kernel weights moved (tail)", "effective rank (last)"], rows)
    lines += ["", "Chosen factors: " + (", ".join(f"{k} x{v}" for k, v in chosen.items())
                                        or "none yet") + "."]
    edges = _bracket_edges(recs, chosen)
    if edges:
        lines += ["", "**At the edge of the bracket** (the best factor is the largest or smallest "
                  "tried, so the arm's optimum may lie outside it and the arm may be "
                  "under-tuned relative to the others): " + ", ".join(edges) + "."]
    return lines


def _bracket_edges(recs, chosen: dict) -> list[str]:
    """``"<arm> x<factor>"`` for each chosen factor that is the smallest or largest tried."""
    out = []
    for arm, factor in chosen.items():
        tried = {r["factor"] for r in recs if r.get("arm") == arm and r.get("factor")}
        values = sorted(tried, key=lambda f: float(fractions.Fraction(f)))
        if len(values) > 1 and factor in (values[0], values[-1]):
            out.append(f"{arm} x{factor}")
    return out


def references_text(recs) -> list[str]:
    """FP32 AdamW and the BF16 rows, and BF16's own paired contrasts (its seeds alone)."""
    refs = [[f, arm, md.mean_cell(recs, f, arm, PRIMARY[0])]
            for f in ("none", "BF16") for arm in ("adamw",) + PRIMARY_ARMS
            if any(r["format"] == f and r["arm"] == arm for r in recs)]
    lines = md.table_or_none(["format", "arm", PRIMARY[1]], refs)
    pairs = [(TREATMENT, CONTROLS[0]), (TREATMENT, CONTROLS[1]), (CONTROLS[0], CONTROLS[1])]
    diffs = [(t, c, stats.paired_differences(recs, "BF16", t, c, PRIMARY[0])) for t, c in pairs]
    if any(d.n >= 2 for _, _, d in diffs):
        lines += ["", "BF16, paired by seed (its seeds alone, t on n − 1 df; outside the pooled "
                      "8-bit model): " + "; ".join(f"{t} − {c} {md.paired_ci(d)} (n={d.n})"
                                                   for t, c, d in diffs if d.n >= 2) + "."]
    return lines
