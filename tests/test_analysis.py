"""The pre-registered analysis, the run records and the report, on synthetic records with planted
effects (no training)."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from altgrad_jax.analysis import matrix as matrix_lib
from altgrad_jax.analysis import records as records_lib
from altgrad_jax.analysis import markdown as markdown_lib
from altgrad_jax.analysis import report as report_lib
from altgrad_jax.analysis import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("E0M7", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0")
ARMS = matrix_lib.PRIMARY_ARMS
METRIC = "test_tuned/macro_f1"


def _rec(fmt, arm, seed, y, *, status="completed", factor=None, extra=None, mech=None):
    r = {"name": matrix_lib.run_name(fmt, arm, seed, factor), "stage": "primary", "format": fmt,
         "arm": arm, "seed": seed, "factor": factor, "status": status, "step": 1000,
         "dataset": "eurlex57k", "metrics": {} if status != "completed" else {METRIC: y},
         "mechanism": mech or {}, "perf": {}, "applied": {}, "curve": {}}
    if extra and status == "completed":
        r["metrics"].update(extra)
    return r


def _planted(benefit: dict, *, noise=0.004, rng_seed=0, seeds=(1, 2, 3)):
    """Records of the primary contrast: y = 0.5 - 0.02 i_format + arm + seed + planted
    ulp_sr-over-adamw_sr benefit per format + N(0, noise)."""
    rng = np.random.default_rng(rng_seed)
    arm_eff = {"adamw_rtn": 0.0, "adamw_sr": 0.03, "ulp_sr": 0.03}
    recs = []
    for i, f in enumerate(FORMATS):
        for a in ARMS:
            for s in seeds:
                y = (0.5 - 0.02 * i + arm_eff[a] + 0.01 * s
                     + (benefit.get(f, 0.0) if a == "ulp_sr" else 0.0) + rng.normal(0, noise))
                recs.append(_rec(f, a, s, y, extra={"test_tuned/micro_f1": y + 0.1,
                                                    "test/pr_auc_micro": y + 0.2}))
    return recs


# ------------------------------------------------------------------------------------ stats
def test_mean_ci_against_scipy():
    s = stats.mean_ci([0.70, 0.74, 0.72])  # s = 0.02, half = t(0.975, 2) * 0.02 / sqrt(3)
    assert s.n == 3 and s.mean == pytest.approx(0.72) and s.std == pytest.approx(0.02)
    assert s.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=0.72, scale=0.02 / math.sqrt(3))
    assert (s.lo, s.hi) == pytest.approx((lo, hi))
    assert stats.mean_ci([0.5]).n == 1 and math.isnan(stats.mean_ci([0.5]).half_width)
    assert stats.mean_ci([]).n == 0


def test_contrast_is_the_cell_mean_difference_with_the_pooled_se():
    """Balanced design: the OLS contrast equals the difference of cell means (NumPy) and its SE is
    sqrt(2 s^2 / n_seeds) with s^2 the model's residual variance; Holm matches a hand step-down."""
    recs = _planted({"E5M2": 0.05}, rng_seed=3)
    df = stats.primary_frame(recs, METRIC, ARMS)
    fit = stats.fit_pooled(df, ARMS, formats=FORMATS)
    cons = stats.format_contrasts(fit, "ulp_sr", "adamw_sr")
    means = df.groupby(["format", "arm"])["y"].mean()
    s2 = float(fit.res.scale)
    # residual df: 63 obs - (21 cell + 2 seed) parameters = 40
    assert fit.res.df_resid == 40
    for c, f in zip(cons, FORMATS):
        assert c.estimate == pytest.approx(means[(f, "ulp_sr")] - means[(f, "adamw_sr")])
        assert c.se == pytest.approx(math.sqrt(2 * s2 / 3))
        t = scipy.stats.t.ppf(0.975, 40)
        assert (c.lo, c.hi) == pytest.approx((c.estimate - t * c.se, c.estimate + t * c.se))
    p = np.array([c.p for c in cons])
    order = np.argsort(p)
    hand = np.empty_like(p)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        hand[i] = running
    assert [c.p_holm for c in cons] == pytest.approx(hand.tolist())


def test_planted_winner_is_found_and_intervals_cover_the_truth():
    truth = {"E5M2": 0.05, "E4M3": 0.015, "E6M1": 0.01}
    recs = _planted(truth, rng_seed=0)
    a = report_lib.analyse_primary(recs, n_boot=1000)
    assert a["best"] == "E5M2" and a["runner_up"] == "E4M3"
    bvr = a["best_vs_runner_up"]
    assert bvr.excludes_zero and bvr.lo <= 0.05 - 0.015 <= bvr.hi
    for c in a["contrasts"]["adamw_sr"]:
        f = c.label.split(":")[0]
        assert c.lo <= truth.get(f, 0.0) <= c.hi, c  # every 95% interval covers its truth
    for c in a["contrasts"]["adamw_rtn"]:  # ulp_sr - adamw_rtn = 0.03 + planted benefit
        f = c.label.split(":")[0]
        assert c.lo <= 0.03 + truth.get(f, 0.0) <= c.hi and c.p_holm < 0.05
    sig = {c.label.split(":")[0] for c in a["contrasts"]["adamw_sr"] if c.p_holm < 0.05}
    assert "E5M2" in sig and "E0M7" not in sig
    assert a["p_winner"]["E5M2"] > 0.95 and sum(a["p_winner"].values()) == pytest.approx(1.0)
    e = np.array([int(f[1]) for f in FORMATS], float)
    b = np.array([truth.get(f, 0.0) for f in FORMATS])
    true_slope = np.polyfit(e, b, 1)[0]
    assert a["trend"].lo <= true_slope <= a["trend"].hi
    text = report_lib.answer_paragraph(a, 63, 63)
    assert "**E5M2**" in text and "**E5M2 benefits most**" in text and "E4M3" in text


def test_planted_null_reads_not_significant():
    recs = _planted({}, rng_seed=5)
    a = report_lib.analyse_primary(recs, n_boot=500)
    assert all(c.p_holm >= 0.05 for c in a["contrasts"]["adamw_sr"])
    assert not a["best_vs_runner_up"].excludes_zero
    assert max(a["p_winner"].values()) < 0.9
    text = report_lib.answer_paragraph(a, 63, 63)
    assert "not distinguishable" in text and "positive benefit: none" in text
    # the power clause: SE sqrt(2 s^2 / 3) on 40 df is a one-sample t test of 41 values with
    # SD se * sqrt(41); statsmodels solves its effect size independently
    from statsmodels.stats.power import TTestPower

    se = math.sqrt(2 * a["fit"].res.scale / 3)
    d = TTestPower().solve_power(nobs=41, alpha=0.05, power=0.8, alternative="two-sided")
    assert f"detects a true benefit of {d * se * math.sqrt(41):.4f} with 80% power" in text


def test_winner_probability_is_seeded():
    recs = _planted({"E5M2": 0.004, "E4M3": 0.004}, rng_seed=1)
    fit = stats.fit_pooled(stats.primary_frame(recs, METRIC, ARMS), ARMS, formats=FORMATS)
    p1 = stats.winner_probability(fit, "ulp_sr", "adamw_sr", n_boot=300, seed=7)
    assert p1 == stats.winner_probability(fit, "ulp_sr", "adamw_sr", n_boot=300, seed=7)
    assert p1 != stats.winner_probability(fit, "ulp_sr", "adamw_sr", n_boot=300, seed=8)


def test_gap_closed_hand_computed():
    means = {("E4M3", "adamw_rtn"): 0.50, ("E4M3", "adamw_sr"): 0.60, ("E4M3", "ulp_sr"): 0.65,
             ("E5M2", "ulp_sr"): 0.4}
    g = stats.gap_closed(means, 0.70)
    assert g[("E4M3", "adamw_sr")] == pytest.approx(0.5) and g[("E4M3", "ulp_sr")] == pytest.approx(0.75)
    assert g[("E4M3", "adamw_rtn")] == 0.0 and math.isnan(g[("E5M2", "ulp_sr")])


def test_not_answerable_until_two_formats_have_every_arm():
    recs = [r for r in _planted({}) if r["format"] == "E4M3" or r["arm"] != "ulp_sr"]
    assert report_lib.analyse_primary(recs) is None
    assert "Not answerable yet" in report_lib.answer_paragraph(None, 33, 63)
    assert "33 of 63 primary cells" in report_lib.answer_paragraph(None, 33, 63)


# ---------------------------------------------------------------------------------- records
def _fake_run(workdir, *, status="completed", steps=1000):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, "train/loss": 1.0 / step}
            if step % 50 == 0:
                row.update({"diag/below_half_step": step / steps, "diag/stall_ratio": 0.5,
                            "diag/grid_steps_mean_abs": 2.0, "diag/flips": 10.0 * step,
                            "diag/updates": 100.0, "diag/flips/Encoder_0/attn/q/kernel": 3.0})
            if step % 250 == 0:
                row["rank/effective_mean"] = 30.0 - step / 100
            if step % 340 == 0:
                row["eval/macro_f1"] = step / 2000
            f.write(json.dumps(row) + "\n")
    res = {"status": status, "step": steps, "reason": "" if status == "completed" else "nan",
           "validation": {"eval/micro_f1": 0.6}, "validation_tuned": {"eval_tuned/macro_f1": 0.5},
           "test": {"test/micro_f1": 0.61, "test/pr_auc_micro": 0.7},
           "test_tuned": {"test_tuned/macro_f1": 0.52, "test_tuned/micro_f1": 0.66},
           "threshold": 0.3, "perf": {"train_steps_per_s": 1.6, "wall_time_s": 700.0},
           "calibration": {f"layer_{i}/kernel": {"median_spacing": 1e-3, "grid_steps_per_lr":
                                                 1e3, "c": 1.0, "format": "E4M3"}
                           for i in range(40)},
           "data_info": {"dataset": "eurlex57k"},
           "environment": {"backend": "cpu", "cpu": "Some CPU", "cpu_count": 2}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(res, f)


def _spec(name="E4M3__ulp_sr__s1"):
    fmt, arm, seed = name.split("__")
    return matrix_lib.RunSpec(name=name, stage="primary", format=fmt, arm=arm,
                              seed=int(seed[1:]), factor=None, workdir="", base_config="")


def test_record_is_compact_and_carries_the_mechanism(tmp_path):
    wd = str(tmp_path / "E4M3__ulp_sr__s1")
    _fake_run(wd)
    rec = records_lib.make_record(_spec(), wd, applied={"field": matrix_lib.C, "value": 1.0,
                                                        "factor": "1"})
    path = records_lib.write_record(str(tmp_path / "study"), rec)
    assert os.path.getsize(path) <= records_lib.MAX_BYTES
    assert rec["metrics"]["test_tuned/macro_f1"] == 0.52
    assert rec["metrics"]["eval_tuned/macro_f1"] == 0.5 and rec["threshold"] == 0.3
    assert rec["perf"]["train_steps_per_s"] == 1.6 and len(rec["calibration"]) == 40
    assert rec["environment"] == {"backend": "cpu", "cpu": "Some CPU", "cpu_count": 2}
    bh = rec["mechanism"]["diag/below_half_step"]
    steps = np.arange(50, 1001, 50)
    assert bh["n"] == 20 and bh["last"] == 1.0
    assert bh["mean"] == pytest.approx(np.mean(steps / 1000))
    assert bh["tail"] == pytest.approx(np.mean(steps[steps >= 800] / 1000))
    assert rec["mechanism"]["rank/effective_mean"]["last"] == 20.0
    assert set(rec["mechanism"]) == set(records_lib.MECHANISM_KEYS)  # no per-layer keys
    loss = rec["curve"]["train/loss"]
    assert len(loss) == records_lib.CURVE_POINTS and loss[0] == [1, 1.0] and loss[-1][0] == 1000
    assert [p[0] for p in rec["curve"]["eval/macro_f1"]] == [340, 680]
    assert records_lib.load_records(str(tmp_path / "study"))["E4M3__ulp_sr__s1"] == json.loads(
        open(path).read())
    assert records_lib.value(rec, "mech/diag/stall_ratio/tail") == 0.5
    assert "!runs/" in open(str(tmp_path / "study" / ".gitignore")).read()


def test_the_study_records_are_not_ignored_by_git():
    """The repository ignores run folders named runs/ at any depth; the study folder's own
    .gitignore must un-ignore its records."""
    proc = subprocess.run(["git", "check-ignore", "-q", "reports/study_cpu/runs/x.json"],
                          cwd=ROOT, capture_output=True)
    assert proc.returncode == 1  # 1 = not ignored
    proc = subprocess.run(["git", "check-ignore", "-q", "runs/study_cpu/x/ckpt"], cwd=ROOT)
    assert proc.returncode == 0  # the checkpoints stay ignored


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    path = str(tmp_path / "m.jsonl")
    with open(path, "w") as f:
        f.write('{"step": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=rf"{path}:3: expected a JSON object"):
        records_lib.read_jsonl(path)
    with open(path, "w") as f:
        f.write('{"step": 1}\n{"step": ')
    with pytest.raises(ValueError, match=rf"{path}:2: malformed JSON"):
        records_lib.read_jsonl(path)


# ----------------------------------------------------------------------------------- report
def _study_dir(tmp_path, recs, plan_cells=None):
    d = str(tmp_path / "study")
    for r in recs:
        records_lib.write_record(d, r)
    if plan_cells is not None:
        with open(os.path.join(d, "plan.json"), "w") as f:
            json.dump({"study": "t", "cells": plan_cells, "chosen": {"ulp_sr": "1"}}, f)
    return d


def test_only_completed_runs_enter_the_tables(tmp_path):
    """One completed and three unfinished runs in a cell: n=1 in every table (F1 and the
    mechanism alike), the other three listed by name (issue 9 item 6)."""
    mech = {"diag/stall_ratio": {"tail": 0.25, "last": 0.2, "mean": 0.3, "n": 3, "series": []}}
    bad = {"diag/stall_ratio": {"tail": 0.99, "last": 0.99, "mean": 0.99, "n": 3, "series": []}}
    recs = [_rec("E4M3", "ulp_sr", 1, 0.6, mech=mech),
            _rec("E4M3", "ulp_sr", 2, None, status="diverged", mech=bad),
            _rec("E4M3", "ulp_sr", 3, None, status="interrupted", mech=bad)]
    cells = [{"name": r["name"], "stage": "primary", "seed": r["seed"]} for r in recs]
    cells.append({"name": "E4M3__ulp_sr__s4", "stage": "primary", "seed": 4})
    d = _study_dir(tmp_path, recs, cells)
    text = open(report_lib.write_report(d, plots=False)).read()
    mech_section = text[text.index("## Mechanism"):text.index("## The seeds")]
    assert "| E4M3 | ulp_sr | — | — | 0.2500 (n=1) |" in mech_section
    assert "0.99" not in text
    assert "`E4M3__ulp_sr__s2`: diverged" in text and "`E4M3__ulp_sr__s3`: interrupted" in text
    assert "- stage primary, 1 not run yet: `E4M3__ulp_sr__s4`" in text
    assert "| primary | 4 | 1 | 2 | 1 |" in text  # cells, completed, stopped, not run yet
    assert "1 of 4 primary cells completed" in text
    csv = open(os.path.join(d, "runs.csv")).read().splitlines()
    assert len(csv) == 4  # every recorded run, header + 3


def test_while_the_primary_stage_runs_only_complete_seed_blocks_enter_the_fit(tmp_path):
    """Seeds 1 and 2 complete, seed 3 begun (with a planted outlier): the first paragraph is
    labelled interim and is exactly the answer of the fit on seeds 1 and 2 alone; once seed 3
    completes every seed enters and the label goes."""
    recs = _planted({"E0M7": 0.02})
    plan = [{"name": r["name"], "stage": "primary", "seed": r["seed"]} for r in recs]
    early = [r for r in recs if r["seed"] < 3]
    begun = [dict(r, metrics={METRIC: 0.99}) for r in recs if r["seed"] == 3][:4]
    d = _study_dir(tmp_path, early + begun, plan)
    text = open(report_lib.write_report(d, plots=False, n_boot=200)).read()
    first = text.split("\n\n")[1]
    assert first.startswith("**Interim** (") and "seeds 1, 2:" in first
    reference = report_lib.answer_paragraph(report_lib.analyse_primary(early, n_boot=200), 0, 0)
    assert reference in first and "**E0M7**" in reference
    section = text[text.index("## Primary contrast"):text.index("## Secondary")]
    assert "0.99" not in section and "(n=3)" not in section and "(n=2)" in section
    for r in recs:
        records_lib.write_record(d, r)
    final = open(report_lib.write_report(d, plots=False, n_boot=200)).read()
    assert not final.split("\n\n")[1].startswith("**Interim**")
    assert "(n=3)" in final[final.index("## Primary contrast"):final.index("## Secondary")]


def test_interim_seeds_counts_a_diverged_cell_as_finished():
    plan = {"cells": [{"name": f"c{s}{i}", "stage": "primary", "seed": s}
                      for s in (1, 2) for i in range(2)]
            + [{"name": "t", "stage": "reference", "seed": 1}]}
    recs = {"c10": {"status": "completed"}, "c11": {"status": "diverged"},
            "c20": {"status": "completed"}}
    assert report_lib.interim_seeds(recs, plan) == [1]
    assert report_lib.interim_seeds(dict(recs, c21={"status": "completed"}), plan) is None
    assert report_lib.interim_seeds({}, None) is None


def test_before_the_model_fits_the_report_lists_the_cells_so_far_without_contrasts(tmp_path):
    """One seed per cell: the pooled model has no residual dof, so no answer and no interval;
    the primary section shows the completed cells' means (n=1) and nothing from other stages."""
    recs = [_rec("E0M7", "adamw_rtn", 1, 0.6176), _rec("E0M7", "adamw_sr", 1, 0.65),
            _rec("E2M5", "ulp_sr", 1, 0.7),
            dict(_rec("BF16", "ulp_sr", 1, 0.9), stage="reference_bf16")]
    text = open(report_lib.write_report(_study_dir(tmp_path, recs), plots=False)).read()
    assert "Not answerable yet" in text.split("\n\n")[1]
    section = text[text.index("## Primary contrast"):text.index("## Secondary")]
    assert "| E0M7 | 0.6176 (n=1) | 0.6500 (n=1) | — |" in section
    assert "| E2M5 | — | — | 0.7000 (n=1) |" in section
    assert "BF16" not in section and "[95% CI]" not in section


def test_e1m6_twins_stay_in_their_section_and_machines_are_checked(tmp_path):
    """The E1M6 check's own E0M7 twins (seed 4, stage e1m6) enter the E1M6 table, bit-identity
    judged on every metric and curve point, and no primary table; a paired group whose
    records name two machines is listed."""
    env = {"cpu": "Box A", "cpu_count": 2, "backend": "cpu", "device_kind": "cpu",
           "versions": {"jax": "0"}}
    recs = _planted({}, rng_seed=3)
    for r in recs:
        r["environment"] = env
    odd = [r for r in recs if r["name"] == "E2M5__adamw_sr__s2"][0]
    odd["environment"] = dict(env, cpu="Box B")
    curve = {"train/loss": [[50, 0.5], [100, 0.25]]}
    for a, y in zip(ARMS, (0.91, 0.92, 0.93)):  # far from every primary E0M7 cell
        twin = dict(_rec("E0M7", a, 4, y, extra={"test/loss": 0.3}), stage="e1m6",
                    environment=env, curve=curve)
        e1 = dict(_rec("E1M6", a, 4, y, extra={"test/loss": 0.3}), stage="e1m6",
                  environment=env, curve=curve)
        if a == "ulp_sr":  # one pair differs in its last logged training loss only
            e1["curve"] = {"train/loss": [[50, 0.5], [100, 0.25000000000000006]]}
        recs += [twin, e1]
    text = open(report_lib.write_report(_study_dir(tmp_path, recs), plots=False)).read()
    e1 = text[text.index("## E1M6"):text.index("## References")]
    assert "| e1m6 | adamw_rtn | 4 | e1m6 | 0.9100 | 0.9100 | 0.000000 | 0.000000 | yes | Box A" in e1
    assert "| e1m6 | ulp_sr | 4 | e1m6 | 0.9300 | 0.9300 |" in e1 and "| no |" in e1
    assert "2 of 3 pairs" in e1 and "manifold_gradient differs by design" not in e1
    upto_e1m6 = text[:text.index("## E1M6")]
    assert "0.9100" not in upto_e1m6 and "0.9300" not in upto_e1m6
    prim = [r[METRIC] for r in (x["metrics"] for x in recs if x["stage"] == "primary"
                                and x["name"].startswith("E0M7__adamw_rtn__"))]
    table = text[text.index("## Primary contrast"):text.index("### Model checks")]
    row = [ln for ln in table.splitlines() if ln.startswith("| E0M7 |")][0]
    half = scipy.stats.t.ppf(0.975, 2) * np.std(prim, ddof=1) / np.sqrt(3)
    assert row.split(" | ")[1] == f"{np.mean(prim):.4f} ± {half:.4f} (n=3)"
    assert "run on more than one machine: primary E2M5 seed 2." in text
    mg = [dict(_rec(f, "manifold_gradient", 1, y, extra={"test/loss": 0.3}), stage="seeds12",
               environment=env, curve=curve) for f, y in (("E0M7", 0.6), ("E1M6", 0.61))]
    text = open(report_lib.write_report(_study_dir(tmp_path / "mg", recs + mg),
                                        plots=False)).read()
    e1 = text[text.index("## E1M6"):text.index("## Per-tensor")]
    assert "| seeds12 | manifold_gradient | 1 | seeds12 | 0.6100 | 0.6000 |" in e1
    assert "2 of 4 pairs" in e1 and "manifold_gradient differs by design" in e1


def test_format_tuned_study_answers_with_each_formats_own_factors(tmp_path):
    """A study without a primary stage but with a format_tuned one: its first paragraph is the
    two-arm pooled answer (balanced: the estimate is the difference of the cell means), its
    table names each (arm, format)'s own factor."""
    recs = [dict(r, stage="format_tuned") for r in _planted({"E5M2": 0.05}, rng_seed=4)
            if r["arm"] != "adamw_rtn"]
    cells = [{"name": r["name"], "stage": "format_tuned", "format": r["format"],
              "arm": r["arm"], "seed": r["seed"]} for r in recs]
    d = _study_dir(tmp_path, recs, plan_cells=cells)
    plan = json.load(open(os.path.join(d, "plan.json")))
    plan["chosen"] = {"ulp_sr@E5M2": "1/3", "adamw_sr@E5M2": "3", "manifold_gradient": "3"}
    json.dump(plan, open(os.path.join(d, "plan.json"), "w"))
    text = open(report_lib.write_report(d, plots=False)).read()
    first = text.split("\n\n")[1]
    y = {a: np.mean([r["metrics"][METRIC] for r in recs if r["format"] == "E5M2"
                     and r["arm"] == a]) for a in ("adamw_sr", "ulp_sr")}
    assert first.startswith("With each arm tuned on each format itself")
    assert f"**E5M2**, {y['ulp_sr'] - y['adamw_sr']:+.4f} [" in first
    assert "(42 of 42 format_tuned cells completed.)" in first
    section = text[text.index("## Each format tuned"):text.index("## The seeds")]
    assert f"| E5M2 | 3 | 1/3 | {y['ulp_sr'] - y['adamw_sr']:+.4f} [" in section
    assert "| E0M7 | — | — |" in section
    seeds12 = text[text.index("## The seeds"):text.index("## E1M6")]
    assert "Each arm at its own tuned factor (the Tuning section): manifold_gradient x3;" in seeds12


def test_per_tensor_section_pairs_the_new_arms_with_the_primary_cells(tmp_path):
    """tensor_sr and grid (stage per_tensor) beside the primary arms of the same format, their
    paired differences by seed: tensor_sr − ulp_sr and grid − adamw_sr."""
    recs = _planted({}, rng_seed=5)
    y = {(r["arm"], r["seed"]): r["metrics"][METRIC] for r in recs if r["format"] == "E7M0"}
    for s_ in (1, 2, 3):
        recs.append(dict(_rec("E7M0", "tensor_sr", s_, y[("ulp_sr", s_)] + 0.01),
                         stage="per_tensor"))
        recs.append(dict(_rec("E7M0", "grid", s_, y[("adamw_sr", s_)] - 0.02 * s_),
                         stage="per_tensor"))
    text = open(report_lib.write_report(_study_dir(tmp_path, recs), plots=False)).read()
    sec = text[text.index("## Per-tensor"):text.index("## References")]
    row = [ln for ln in sec.splitlines() if ln.startswith("| E7M0 |")][0].split(" | ")
    d = [-0.02 * s_ for s_ in (1, 2, 3)]
    half = scipy.stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / np.sqrt(3)
    assert row[5] == "+0.0100 [+0.0100, +0.0100]"
    p = scipy.stats.ttest_1samp(d, 0.0).pvalue  # the family's only finite p: Holm leaves it
    assert row[6].rstrip(" |") == f"{np.mean(d):+.4f} [{np.mean(d) - half:+.4f}, " \
        f"{np.mean(d) + half:+.4f}] (Holm p {p:.3g})"
    assert len([ln for ln in sec.splitlines() if ln.startswith("| E")]) == 1  # E7M0 only
    assert "tuned factor, so its E0M7" in sec  # no plan: no factors to name
    mech = text[text.index("## Mechanism"):text.index("## The seeds")]
    assert "The grid rows compare with the others on flips only" in mech
    d = _study_dir(tmp_path / "planned", recs, plan_cells=[])
    plan = json.load(open(os.path.join(d, "plan.json")))
    plan["chosen"] = {"tensor_sr": "1/3", "ulp_sr": "1"}
    json.dump(plan, open(os.path.join(d, "plan.json"), "w"))
    text = open(report_lib.write_report(d, plots=False)).read()
    assert "its own tuned factor (x1/3 vs x1), so its E0M7 difference is the step size's" in text


def test_report_from_records_alone(tmp_path):
    recs = _planted({"E5M2": 0.05, "E4M3": 0.01}, rng_seed=2)
    recs += [_rec("none", "adamw", s, 0.62) for s in (1, 2, 3)]
    recs += [dict(_rec("E1M6", a, 1, 0.4), stage="e1m6") for a in ARMS]  # not primary
    recs += [dict(_rec("BF16", a, s, 0.9 if a == "ulp_sr" else 0.3), stage="reference_bf16")
             for a in ARMS for s in (1, 2, 3)]  # a huge "benefit" outside the primary stage
    recs += [dict(_rec("E3M4", "ulp_sr", 0, None, factor=f, extra={}), status="completed",
                  metrics={"eval_tuned/macro_f1": v}, applied={"field": matrix_lib.C,
                                                                "value": float(eval(f))})
             for f, v in (("1/3", 0.3), ("1", 0.35), ("3", 0.32))]
    recs[-1]["curve"] = {"train/loss": [[1, 1.0], [2, 0.5]]}
    d = _study_dir(tmp_path, recs)
    text = open(report_lib.write_report(d)).read()
    first = text.split("\n\n")[1]
    assert "**E5M2**" in first and "[" in first and "benefits most" in first
    assert "closes G = " in first  # FP32 reference present: the gap closed is quoted
    mech = text[text.index("## Mechanism"):text.index("## The seeds")]
    assert "| E5M2 | ulp_sr |" in mech and mech.count("+0.0") >= 7  # the benefit beside it
    primary = text.split("## Secondary")[0].split("## Primary")[1]
    assert "| E1M6 |" not in primary and "| BF16 |" not in primary
    e1 = text[text.index("## E1M6"):text.index("## References")]
    e0 = [r for r in recs if r["name"] == "E0M7__adamw_rtn__s1"][0]["metrics"][METRIC]
    assert f"| e1m6 | adamw_rtn | 1 | primary | 0.4000 | {e0:.4f} |" in e1
    refs = text[text.index("## References"):text.index("## Tuning")]
    assert ("ulp_sr − adamw_sr +0.6000 [+0.6000, +0.6000] (n=3); ulp_sr − adamw_rtn +0.6000"
            in refs) and "adamw_sr − adamw_rtn +0.0000" in refs  # BF16's own seeds, paired
    tune = text[text.index("## Tuning"):text.index("## Caveats")]
    assert "| ulp_sr | E3M4 | 1/3 | optimizer.grid_step_multiplier | 0.33333 | 0.3000 |" in tune
    for caveat in ("exponent bias", "E1M6 = E0M7", "eps/S", "6 layers", "embedding"):
        assert caveat.lower() in text.lower()
    for png in ("primary_by_format.png", "mechanism.png", "learning_curves.png"):
        assert os.path.getsize(os.path.join(d, "plots", png)) > 1000
    # the command line rebuilds it from the records alone
    os.remove(os.path.join(d, "REPORT.md"))
    proc = subprocess.run([sys.executable, "-m", "altgrad_jax.analysis.report", f"--study={d}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert open(os.path.join(d, "REPORT.md")).read().split("\n\n")[1] == first


def test_report_flags_a_tuning_choice_at_the_edge_and_old_dropout_masks(tmp_path):
    """The chosen factor of ulp_sr (x3) is the largest tried: flagged; adamw_sr's (x1) is inside
    the bracket: not flagged. A record without code facts predates the counter-based dropout."""
    recs = []
    for arm, best in (("ulp_sr", "3"), ("adamw_sr", "1")):
        for factor in ("1/3", "1", "3"):
            r = _rec("E3M4", arm, 0, None, factor=factor)
            r["stage"], r["metrics"] = "tune", {"eval_tuned/macro_f1": 0.7 if factor == best
                                                else 0.6}
            r["code"] = {"dropout_impl": "hash"}
            recs.append(r)
    del recs[0]["code"]  # E3M4 ulp_sr x1/3: written before records carried code facts
    recs[1]["perf"] = {"train_steps_per_s": 2.0, "wall_time_s": 600.0}
    # resumed before wall time was carried across processes: wall below the training time
    recs[2]["perf"] = {"train_steps_per_s": 1.0, "wall_time_s": 1200.0, "train_time_s": 1500.0}
    d = str(tmp_path / "study")
    for r in recs:
        records_lib.write_record(d, r)
    with open(os.path.join(d, "plan.json"), "w") as f:
        json.dump({"study": "t", "cells": [], "chosen": {"ulp_sr": "3", "adamw_sr": "1"},
                   "config": {"amendments": ["masks changed", "bracket extended"]}}, f)
    text = open(report_lib.write_report(d, plots=False)).read()
    amend = text[text.index("## Protocol amendments"):text.index("## Cost")]
    assert "1. masks changed\n2. bracket extended\n" in amend
    edge = [ln for ln in text.splitlines() if ln.startswith("**At the edge of the bracket**")]
    assert len(edge) == 1 and edge[0].endswith(": ulp_sr x3.")
    masks = [ln for ln in text.splitlines() if ln.startswith("- Dropout masks:")]
    assert len(masks) == 1 and "`E3M4__ulp_sr__s0__x1o3`" in masks[0]
    assert "outside the test analysis" in masks[0] and "adamw_sr" not in masks[0]
    cost = text[text.index("## Cost"):text.index("## Caveats")]
    # median of 1/2 and 1/1 s per step = 0.75; mean wall (600 + 1200) / 2 s = 15 min; 0.5 h
    assert "2 completed runs: median 0.75 s per training step" in cost
    assert "mean wall time 15.0 min per run" in cost and "0.5 core-hours in all (a lower " in cost
    assert "bound: 1 of these runs resumed before" in cost


def test_rank_association_matches_a_hand_computed_spearman():
    # ranks x 1..4, y 1,3,2,4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    a = stats.rank_association({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4},
                               {"a": 5.0, "b": 7.0, "c": 6.0, "d": 9.0, "e": 1.0})
    assert a.n == 4 and a.rho == pytest.approx(0.8)
    assert stats.rank_association({"a": 1.0, "b": 2.0, "c": 3.0},
                                  {"a": 1.0, "b": 2.0, "c": 3.0}) is None  # 3 points: none
    nan = stats.rank_association({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5},
                                 {"a": 1, "b": 2, "c": 3, "d": 4, "e": float("nan")})
    assert nan.n == 4 and nan.rho == pytest.approx(1.0)
    # a figure that is the same on every format (e.g. the coordinates updated) ranks nothing
    flat = stats.rank_association({"a": 1, "b": 2, "c": 3, "d": 4},
                                  {"a": 7, "b": 7, "c": 7, "d": 7})
    assert flat.constant and flat.n == 4 and math.isnan(flat.rho) and math.isnan(flat.p)


def test_report_ranks_the_benefit_against_the_controls_mechanism(tmp_path):
    """Planted: the benefit grows across formats exactly as adamw_sr's below-half-step fraction
    does (rho = +1) and falls as its flips do (rho = -1)."""
    benefit = {f: 0.01 * i for i, f in enumerate(FORMATS)}
    recs = _planted(benefit, noise=0.0005, rng_seed=3)
    for r in recs:
        i = FORMATS.index(r["format"])
        r["mechanism"] = {"diag/below_half_step": {"tail": 0.5 + 0.05 * i},
                          "diag/flips": {"tail": 100.0 - i}, "diag/updates": {"tail": 64.0}}
    text = open(report_lib.write_report(_study_dir(tmp_path, recs), plots=False,
                                        n_boot=50)).read()
    mech = text[text.index("## Mechanism"):text.index("## The seeds")]
    rows = [ln for ln in mech.splitlines() if ln.startswith("| diag/")]
    assert rows[0].startswith("| diag/below_half_step | +1.00 | < 0.001 |")
    assert rows[0].endswith("| 7 |")
    assert rows[1].startswith("| diag/flips | -1.00 |")
    assert rows[2].startswith("| diag/updates | — (the same on every format) |")
    assert len(rows) == 3  # no other figure
    assert ("Strongest: the benefit rises as the control's updates below half a grid step "
            "(fraction) rises (rho +1.00, p < 0.001, 7 formats;") in mech  # first of the ties


def test_primary_plot_adds_the_contrast_panel_when_the_model_fits(tmp_path):
    """With the pooled model's contrasts the figure gains a second panel (wider PNG)."""
    import matplotlib.image

    from altgrad_jax.analysis import plots as plots_lib

    recs = _planted({"E0M7": 0.02}, seeds=(1, 2))
    a = report_lib.analyse_primary(recs, n_boot=50)
    fmts = list(a["fit"].formats)
    one = plots_lib.plot_metric_by_format(recs, str(tmp_path / "one.png"), METRIC, fmts, ARMS, "y")
    two = plots_lib.plot_metric_by_format(recs, str(tmp_path / "two.png"), METRIC, fmts, ARMS, "y",
                                          contrasts=a["contrasts"])
    w1, w2 = (matplotlib.image.imread(p).shape[1] for p in (one, two))
    assert w2 - w1 > 250  # the 4.5-inch panel at 80 dpi (bbox "tight" trims the margins)


# ------------------------------------------------------------- model checks and power
@pytest.mark.parametrize("n,alpha,power", [(3, 0.05, 0.8), (8, 0.05, 0.8), (40, 0.01, 0.9)])
def test_minimum_detectable_effect_matches_statsmodels_t_power(n, alpha, power):
    """One-sample t test: SE = sd / sqrt(n) on n - 1 df; statsmodels solves for d = delta / sd."""
    from statsmodels.stats.power import TTestPower

    d = TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    sd = 0.013
    mde = stats.minimum_detectable_effect(sd / math.sqrt(n), n - 1, alpha=alpha, power=power)
    assert mde == pytest.approx(d * sd, rel=1e-4)  # statsmodels solves to ~1e-6
    assert math.isnan(stats.minimum_detectable_effect(0.0, 10))
    assert math.isnan(stats.minimum_detectable_effect(0.01, 0))
    with pytest.raises(ValueError, match="power=0.04 must lie between alpha=0.05 and 1"):
        stats.minimum_detectable_effect(0.01, 10, power=0.04)


def _lstsq_residuals(df):
    """Residuals of y on one-hot (format, arm) cells plus one-hot seeds (first dropped): the
    column space of ``y ~ C(format) * C(arm) + C(seed)``, built by hand with NumPy."""
    cells = sorted(set(zip(df["format"], df["arm"])))
    seeds = sorted(df["seed"].unique())[1:]
    X = np.array([[float((f, a) == c) for c in cells] + [float(s == t) for t in seeds]
                  for f, a, s in zip(df["format"], df["arm"], df["seed"])])
    y = df["y"].to_numpy()
    return y - X @ np.linalg.lstsq(X, y, rcond=None)[0]


def test_model_checks_match_scipy_on_hand_built_residuals():
    recs = _planted({"E5M2": 0.02}, rng_seed=4)
    df = stats.primary_frame(recs, METRIC, ARMS)
    fit = stats.fit_pooled(df, ARMS, formats=FORMATS)
    mc = stats.model_checks(fit)
    frame = fit.frame
    resid = _lstsq_residuals(frame)
    assert np.asarray(fit.res.resid) == pytest.approx(resid, abs=1e-12)
    groups = [resid[(frame["format"] == f).to_numpy()] for f in FORMATS]
    assert mc.spread_p == pytest.approx(scipy.stats.levene(*groups, center="median").pvalue)
    assert mc.normal_p == pytest.approx(scipy.stats.shapiro(resid).pvalue)
    assert mc.resid_sd == pytest.approx(math.sqrt(np.sum(resid ** 2) / (63 - 23)))
    # balanced: the per-format SDs' squares average to the pooled variance
    assert np.mean([v ** 2 for v in mc.sd_by_format.values()]) == pytest.approx(mc.resid_sd ** 2)


def test_model_checks_flag_a_format_with_ten_times_the_noise():
    recs = _planted({}, rng_seed=6)
    rng = np.random.default_rng(11)
    for r in recs:
        if r["format"] == "E7M0":
            r["metrics"][METRIC] += rng.normal(0, 0.04)
    fit = stats.fit_pooled(stats.primary_frame(recs, METRIC, ARMS), ARMS, formats=FORMATS)
    mc = stats.model_checks(fit)
    assert mc.spread_p < 0.01
    assert max(mc.sd_by_format, key=mc.sd_by_format.get) == "E7M0"
    calm = stats.model_checks(stats.fit_pooled(stats.primary_frame(_planted({}, rng_seed=6),
                                                                   METRIC, ARMS), ARMS,
                                               formats=FORMATS))
    assert calm.spread_p > 0.05


def test_paired_differences_pair_by_seed_and_skip_unpaired_seeds():
    recs = [_rec("E4M3", "ulp_sr", 1, 0.70), _rec("E4M3", "adamw_sr", 1, 0.68),
            _rec("E4M3", "ulp_sr", 2, 0.66), _rec("E4M3", "adamw_sr", 2, 0.67),
            _rec("E4M3", "ulp_sr", 3, 0.90),  # no control at seed 3: not paired
            _rec("E5M2", "adamw_sr", 3, 0.10)]
    d = stats.paired_differences(recs, "E4M3", "ulp_sr", "adamw_sr", METRIC)
    ref = stats.mean_ci([0.70 - 0.68, 0.66 - 0.67])
    assert d.n == 2 and d.mean == pytest.approx(0.005) and (d.lo, d.hi) == pytest.approx(
        (ref.lo, ref.hi))


def test_summary_p_is_the_one_sample_t_test_and_holm_p_skips_nan():
    x = [0.012, -0.003, 0.021, 0.008]
    assert stats.mean_ci(x).p == pytest.approx(scipy.stats.ttest_1samp(x, 0.0).pvalue, rel=1e-9)
    assert math.isnan(stats.mean_ci([0.01]).p) and math.isnan(stats.mean_ci([0.02, 0.02]).p)
    ps = [0.04, float("nan"), 0.01, 0.30]
    # Holm by hand on the three finite p: sorted 0.01, 0.04, 0.30 times 3, 2, 1, running max.
    got = stats.holm_p(ps)
    assert got[0] == pytest.approx(0.08) and got[2] == pytest.approx(0.03)
    assert got[3] == pytest.approx(0.30) and math.isnan(got[1])
    assert stats.holm_p([]) == []


def test_seeds12_table_has_paired_t_p_and_holm_across_formats(tmp_path):
    """manifold_gradient − adamw per regime-(a) format: the paired t test's p (scipy's
    ttest_rel) and Holm across the table's formats (by hand)."""
    shift = {"E5M2": (0.010, 0.012, 0.011), "E3M4": (0.004, -0.006, 0.003),
             "BF16": (-0.002, 0.001, 0.0)}
    recs = []
    for f, ds in shift.items():
        for s_, d in zip((1, 2, 3), ds):
            base = 0.6 + 0.01 * s_
            recs += [dict(_rec(f, "adamw", s_, base), stage="seeds12"),
                     dict(_rec(f, "manifold_gradient", s_, base + d), stage="seeds12")]
    text = open(report_lib.write_report(_study_dir(tmp_path, recs), plots=False)).read()
    sec = text[text.index("## The seeds"):text.index("## E1M6")]
    assert "The grid rows compare" not in text  # no grid record, no note on grid rows
    p = {f: scipy.stats.ttest_rel([0.6 + 0.01 * s_ + d for s_, d in zip((1, 2, 3), ds)],
                                  [0.6 + 0.01 * s_ for s_ in (1, 2, 3)]).pvalue
         for f, ds in shift.items()}
    order = sorted(p, key=p.get)
    holm, run = {}, 0.0
    for i, f in enumerate(order):
        run = max(run, min(1.0, (len(p) - i) * p[f]))
        holm[f] = run
    for f in shift:
        row = [ln for ln in sec.splitlines() if ln.startswith(f"| {f} |")][0].split(" | ")
        assert row[4] == (f"{p[f]:.3g}" if p[f] >= 0.001 else "< 0.001")
        assert row[5].rstrip(" |") == (f"{holm[f]:.3g}" if holm[f] >= 0.001 else "< 0.001")


def test_report_carries_the_model_checks_and_the_power(tmp_path):
    recs = _planted({"E5M2": 0.05}, rng_seed=2)
    text = open(report_lib.write_report(_study_dir(tmp_path, recs), plots=False,
                                        n_boot=200)).read()
    section = text[text.index("### Model checks"):text.index("## Secondary")]
    y = {(r["format"], r["arm"], r["seed"]): r["metrics"][METRIC] for r in recs}
    diffs = [y[("E5M2", "ulp_sr", s)] - y[("E5M2", "adamw_sr", s)] for s in (1, 2, 3)]
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=np.mean(diffs),
                                    scale=np.std(diffs, ddof=1) / math.sqrt(3))
    assert f"{np.mean(diffs):+.4f} [{lo:+.4f}, {hi:+.4f}] (n=3)" in section
    assert "Brown–Forsythe p = " in section and "Shapiro–Wilk p = " in section
    assert "40 residual df" in section and "80% power" in section
    assert "(E5M2's upper limit)" in section


def test_log_axes_only_where_the_values_span_a_decade():
    from matplotlib.figure import Figure

    from altgrad_jax.analysis import plots as plots_lib

    cases = {"linear": [1176.0, 2370.0], "log": [0.0002, 0.0711], "symlog": [0.0, 3.2, 1579.0]}
    for scale, vals in cases.items():
        ax = Figure().add_subplot()
        plots_lib._log_axis(ax, "y", vals)
        assert ax.get_yscale() == scale, (scale, vals)
    ax = Figure().add_subplot()
    plots_lib._log_axis(ax, "y", [0.0, 3.2, 1579.0])
    assert ax.yaxis.get_transform().linthresh == 3.2  # linear up to the smallest positive value


def test_report_plots_the_benefit_against_the_controls_mechanism(tmp_path):
    mech = {"diag/grid_steps_mean_abs": 0.01, "diag/flips": 100.0, "diag/stall_ratio": 0.99}
    recs = _planted({"E7M0": -0.03}, rng_seed=2)
    for i, r in enumerate(recs):
        r["mechanism"] = {k: {"tail": v * (1 + FORMATS.index(r["format"])), "last": v, "mean": v,
                              "n": 3, "series": []} for k, v in mech.items()}
    d = _study_dir(tmp_path, recs)
    text = open(report_lib.write_report(d, n_boot=100)).read()
    assert "![benefit against the mechanism](plots/benefit_vs_mechanism.png)" in text
    assert os.path.getsize(os.path.join(d, "plots", "benefit_vs_mechanism.png")) > 1000
    early = _study_dir(tmp_path / "early", [r for r in recs if r["seed"] == 1])  # no fit yet
    assert "benefit_vs_mechanism" not in open(report_lib.write_report(early)).read()


def test_report_counts_the_machines_the_records_name(tmp_path):
    env = {"cpu": "CPU A", "cpu_count": 2, "backend": "cpu", "device_kind": "cpu",
           "versions": {"jax": "0.1"}}
    recs = [dict(_rec("E4M3", "ulp_sr", s, 0.6), environment=env) for s in (1, 2)]
    recs.append(_rec("E4M3", "ulp_sr", 3, 0.6))  # an old record: no environment
    recs.append(dict(_rec("E4M3", "ulp_sr", 4, None, status="diverged"), environment=env))
    text = open(report_lib.write_report(_study_dir(tmp_path, recs), plots=False)).read()
    line = [ln for ln in text.splitlines() if ln.startswith("Machines named")][0]
    assert "CPU A (2 cores, cpu: cpu; jax 0.1): 2 runs" in line  # completed runs only
    assert '"not recorded": the record predates the field' in line
    assert line.endswith("; not recorded: 1 run.")


def test_format_alone_contrasts_use_each_formats_own_variance():
    """Each format's own two-way model (3 arms x 3 seeds): the estimate is the cell-mean
    difference, the SE sqrt(2 s_f^2 / 3) with s_f^2 from a NumPy least-squares fit of that
    format's cells alone, the interval t on 4 df; E7M0's tenfold noise widens only its own."""
    recs = _planted({"E5M2": 0.03}, rng_seed=8)
    rng = np.random.default_rng(12)
    for r in recs:
        if r["format"] == "E7M0":
            r["metrics"][METRIC] += rng.normal(0, 0.04)
    df = stats.primary_frame(recs, METRIC, ARMS)
    alone = stats.by_format(stats.format_alone_contrasts(df, "ulp_sr", "adamw_sr", FORMATS))
    t4 = scipy.stats.t.ppf(0.975, 4)
    for f in FORMATS:
        sub = df[df["format"] == f].reset_index(drop=True)
        resid = _lstsq_residuals(sub)
        se = math.sqrt(2 * np.sum(resid ** 2) / 4 / 3)
        m = sub.groupby("arm")["y"].mean()
        c = alone[f]
        assert c.df == 4 and c.estimate == pytest.approx(m["ulp_sr"] - m["adamw_sr"])
        assert c.se == pytest.approx(se) and (c.lo, c.hi) == pytest.approx(
            (c.estimate - t4 * se, c.estimate + t4 * se))
    assert alone["E7M0"].se > 5 * max(alone[f].se for f in FORMATS if f != "E7M0")
    assert alone["E5M2"].p_holm < 0.05


def test_welch_combination_of_two_means_is_welchs_t_test():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 0.1, 5), rng.normal(0.1, 0.4, 8)
    ca = stats.Contrast("a", a.mean(), a.std(ddof=1) / math.sqrt(5), 0, 0, 0, df=4.0)
    cb = stats.Contrast("b", b.mean(), b.std(ddof=1) / math.sqrt(8), 0, 0, 0, df=7.0)
    c = stats.welch_combination([ca, cb], [1.0, -1.0], "a - b")
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert c.df == pytest.approx(ref.df) and c.p == pytest.approx(ref.pvalue)
    lo, hi = ref.confidence_interval(0.95)
    assert (c.lo, c.hi) == pytest.approx((lo, hi)) and c.estimate == pytest.approx(
        a.mean() - b.mean())
    exact = stats.welch_combination([dataclasses.replace(ca, se=0.0)], [1.0], "exact")
    assert exact.estimate == ca.estimate and exact.se == 0.0 and math.isnan(exact.lo)


def test_answer_adds_the_own_variance_reading_only_when_the_spread_differs():
    calm = report_lib.answer_paragraph(report_lib.analyse_primary(_planted({}, rng_seed=6),
                                                                  n_boot=50), 63, 63)
    assert "Brown–Forsythe" not in calm
    recs = _planted({}, rng_seed=6)
    rng = np.random.default_rng(11)
    for r in recs:
        if r["format"] == "E7M0":
            r["metrics"][METRIC] += rng.normal(0, 0.04)
    a = report_lib.analyse_primary(recs, n_boot=50)
    text = report_lib.answer_paragraph(a, 63, 63)
    assert "The residual spread differs between formats (Brown–Forsythe p = " in text
    assert "t on 4 df, Holm" in text and "Welch–Satterthwaite" in text
    # best − runner-up from the two formats' own models: Welch's df from their 4 df each
    own = stats.by_format(a["alone"])
    b, r = own[a["best"]], own[a["runner_up"]]
    bvr = a["alone_bvr"]
    assert bvr.estimate == pytest.approx(b.estimate - r.estimate)
    assert bvr.df == pytest.approx((b.se ** 2 + r.se ** 2) ** 2 / (b.se ** 4 / 4 + r.se ** 4 / 4))
    assert f"best − runner-up {markdown_lib.ci(bvr)} (Welch–Satterthwaite, {bvr.df:.1f} df)" in text


def test_sections_without_cells_say_so_instead_of_an_empty_table(tmp_path):
    text = open(report_lib.write_report(_study_dir(tmp_path, _planted({})), plots=False,
                                        n_boot=50)).read()
    for section, nxt in (("## The seeds' 12", "## E1M6"), ("## E1M6", "## References"),
                         ("## References", "## Tuning")):
        body = text[text.index(section):text.index(nxt)]
        assert "No completed cells yet." in body and "|---" not in body, section


def test_a_study_without_a_primary_stage_says_so_and_lists_its_tuning(tmp_path):
    mech = {"diag/flips": {"tail": 77.0}, "rank/effective_mean": {"last": 105.1}}
    recs = [dict(_rec("E7M0", "ulp_sr", 0, None, factor=f, mech=mech), stage="tune_probe",
                 metrics={"eval_tuned/macro_f1": v},
                 applied={"field": matrix_lib.C, "value": float(eval(f))})
            for f, v in (("3", 0.59), ("1/3", 0.61), ("1", 0.66))]
    cells = [{"name": r["name"], "stage": "tune_probe", "seed": 0} for r in recs]
    text = open(report_lib.write_report(_study_dir(tmp_path, recs, cells), plots=False)).read()
    assert text.split("\n\n")[1].startswith("**No primary stage in this study's plan**")
    assert "Not answerable yet" not in text
    tune = text[text.index("## Tuning"):text.index("Chosen factors")]
    rows = [ln for ln in tune.splitlines() if ln.startswith("| ulp_sr |")]
    assert [ln.split(" | ")[2] for ln in rows] == ["1/3", "1", "3"]  # by factor's value
    assert rows[1].endswith("| 0.6600 | 77 | 105.1 |")


def test_bootstrap_residuals_stay_in_their_stratum():
    """Within strata each observation's draws are its own stratum's residuals (set membership,
    checked against the input); without strata draws range over all residuals."""
    resid = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 40.0])
    strata = np.array(["a", "a", "a", "b", "b", "b", "b"])
    draws = stats.bootstrap_residuals(resid, 400, np.random.default_rng(0), strata)
    assert draws.shape == (400, 7)
    assert set(np.unique(draws[:, :3])) == {1.0, 2.0, 3.0}
    assert set(np.unique(draws[:, 3:])) == {10.0, 20.0, 30.0, 40.0}
    pooled = stats.bootstrap_residuals(resid, 400, np.random.default_rng(0))
    assert set(np.unique(pooled[:, 0])) == set(resid)


def test_within_format_winner_probability_keeps_a_noisy_formats_spread_its_own():
    """E7M0 10x noisier than the rest, E5M2 with a clear planted benefit: resampling within
    formats leaves E5M2's bootstrap benefit nearly exact (its own small residuals), so its
    P(winner) is at least the pooled-residual one; both sum to 1."""
    recs = _planted({"E5M2": 0.02}, rng_seed=9, noise=0.002)
    rng = np.random.default_rng(21)
    for r in recs:
        if r["format"] == "E7M0":
            r["metrics"][METRIC] += rng.normal(0, 0.03)
    fit = stats.fit_pooled(stats.primary_frame(recs, METRIC, ARMS), ARMS, formats=FORMATS)
    pooled = stats.winner_probability(fit, "ulp_sr", "adamw_sr", n_boot=400)
    within = stats.winner_probability(fit, "ulp_sr", "adamw_sr", n_boot=400, within_format=True)
    assert sum(pooled.values()) == pytest.approx(1.0) and sum(within.values()) == pytest.approx(1)
    assert within["E5M2"] >= pooled["E5M2"] and within["E5M2"] > 0.9
