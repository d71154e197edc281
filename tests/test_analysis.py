"""The experiment matrix: t quantiles, CIs, paired differences, loading run folders, the report,
matrix expansion and one tiny end-to-end sweep through sweep.py."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from altgrad_jax.analysis import matrix as matrix_lib
from altgrad_jax.analysis import report as report_lib
from altgrad_jax.analysis import results as results_lib
from altgrad_jax.analysis import stats
from configs import matrix as matrix_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------- stats
@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262),
                                         (29, 2.045)])
def test_t_quantile_matches_textbook_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_other_levels_and_symmetry():
    assert stats.t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)  # one-sided 5%, df 10
    assert stats.t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.960, abs=5e-4)  # -> normal
    assert stats.t_cdf(stats.t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-10)
    with pytest.raises(ValueError, match="p must be"):
        stats.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        stats.t_quantile(0.975, 0)


def test_mean_ci_hand_computed():
    # values 0.70, 0.74, 0.72: mean 0.72, s = 0.02, half = 4.303 * 0.02 / sqrt(3) = 0.049687
    s = stats.mean_ci([0.70, 0.74, 0.72])
    assert s.n == 3 and s.mean == pytest.approx(0.72)
    assert s.std == pytest.approx(0.02)
    assert s.half_width == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-4)
    assert (s.lo, s.hi) == pytest.approx((0.72 - s.half_width, 0.72 + s.half_width))
    one = stats.mean_ci([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.half_width)
    assert not one.excludes_zero()
    assert stats.mean_ci([]).n == 0
    with pytest.raises(ValueError, match="finite"):
        stats.mean_ci([1.0, float("nan")])


def test_bootstrap_ci_is_seeded_and_inside_the_range():
    x = [0.1, 0.4, 0.2, 0.3, 0.25, 0.33, 0.17, 0.21]
    a = stats.bootstrap_ci(x, seed=3, n_resamples=500)
    assert a == stats.bootstrap_ci(x, seed=3, n_resamples=500)
    assert a != stats.bootstrap_ci(x, seed=4, n_resamples=500)
    assert 0.1 <= a[0] < np.mean(x) < a[1] <= 0.4
    t = stats.mean_ci(x)  # the percentile bootstrap is narrower than t with few values
    assert t.lo < a[0] and a[1] < t.hi
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.3]))


class _R:
    """A minimal run record for the stats functions."""

    def __init__(self, fmt, opt, seed, value):
        self.format, self.optimizer, self.seed, self._v = fmt, opt, seed, value

    def get(self, key, default=None):
        return self._v if key == "test/micro_f1" else default


def test_paired_differences_hand_made():
    runs = [
        # E5M2: manifold better on every seed: diffs 0.02, 0.03, 0.025 -> significant
        _R("E5M2", "adamw", 0, 0.70), _R("E5M2", "manifold_update", 0, 0.72),
        _R("E5M2", "adamw", 1, 0.71), _R("E5M2", "manifold_update", 1, 0.74),
        _R("E5M2", "adamw", 2, 0.69), _R("E5M2", "manifold_update", 2, 0.715),
        # E4M3: diffs +0.05, -0.04 -> CI includes 0; seed 2 diverged (None) -> no pair
        _R("E4M3", "adamw", 0, 0.70), _R("E4M3", "manifold_update", 0, 0.75),
        _R("E4M3", "adamw", 1, 0.72), _R("E4M3", "manifold_update", 1, 0.68),
        _R("E4M3", "adamw", 2, 0.71), _R("E4M3", "manifold_update", 2, None),
        # another treatment is ignored
        _R("E4M3", "grid", 0, 0.10),
    ]
    diffs = stats.paired_differences(runs, "test/micro_f1", "manifold_update")
    assert [d.format for d in diffs] == ["E5M2", "E4M3"]  # sorted by mean difference
    e5, e4 = diffs
    assert e5.seeds == (0, 1, 2) and e5.diffs == pytest.approx((0.02, 0.03, 0.025))
    assert e5.summary.mean == pytest.approx(0.025)
    assert e5.summary.std == pytest.approx(0.005)
    assert e5.summary.half_width == pytest.approx(4.3027 * 0.005 / math.sqrt(3), rel=1e-4)
    assert e5.significant
    assert e4.seeds == (0, 1) and e4.diffs == pytest.approx((0.05, -0.04))
    assert e4.summary.mean == pytest.approx(0.005)
    assert not e4.significant and e4.summary.lo < 0 < e4.summary.hi
    lo, hi = e5.bootstrap
    assert 0.02 - 1e-12 <= lo <= hi <= 0.03 + 1e-12


# --------------------------------------------------------------------------- fabricated runs
def _write_run(sweep, name, *, status="completed", micro=0.7, macro=0.6, dataset="synthetic",
               stall=(0.9, 0.8, 0.5, 0.4, 0.3), steps_per_s=2.0, extra_line=None):
    d = os.path.join(sweep, name)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for i, s in enumerate(stall):
            step = 10 * (i + 1)
            f.write(json.dumps({"step": step, "train/loss": 1.0 / step, "diag/stall_ratio": s,
                                "diag/flip_rate": 0.01 * (i + 1),
                                "diag/windowed_stall_ratio": s + 0.01}) + "\n")
        f.write(json.dumps({"step": 50, "rank/effective_mean": 7.5}) + "\n")
        if extra_line is not None:
            f.write(extra_line + "\n")
    res = {"status": status, "step": 50}
    if status == "completed":
        res.update({"test": {"test/micro_f1": micro, "test/macro_f1": macro},
                    "test_tuned": {"test_tuned/micro_f1": micro + 0.01},
                    "validation": {"eval/micro_f1": micro - 0.01}, "steps_per_s": steps_per_s,
                    "samples_per_s": 8 * steps_per_s, "train_time_s": 25.0,
                    "fallback_events": [], "data_info": {"dataset": dataset}})
    else:
        res["reason"] = "20 consecutive non-finite losses"
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(res, f)
    return d


def _fabricated_sweep(tmp_path):
    sweep = str(tmp_path / "sweep")
    os.makedirs(sweep)
    vals = {  # (format, optimizer, seed) -> micro-F1
        ("E5M2", "adamw", 0): 0.70, ("E5M2", "manifold_update", 0): 0.72,
        ("E5M2", "adamw", 1): 0.71, ("E5M2", "manifold_update", 1): 0.74,
        ("E5M2", "adamw", 2): 0.69, ("E5M2", "manifold_update", 2): 0.715,
        ("E4M3", "adamw", 0): 0.70, ("E4M3", "manifold_update", 0): 0.75,
        ("E4M3", "adamw", 1): 0.72, ("E4M3", "manifold_update", 1): 0.68,
        ("E4M3", "adamw", 2): 0.71,
    }
    for (f, o, s), v in vals.items():
        _write_run(sweep, matrix_lib.run_name(f, o, s), micro=v, macro=v - 0.1)
    _write_run(sweep, "E4M3__manifold_update__s2", status="diverged")
    plan = {"matrix": {"formats": ["E5M2", "E4M3"], "optimizers": ["adamw", "manifold_update"],
                       "seeds": [0, 1, 2, 3], "baseline": "adamw",
                       "base_config": "configs/smoke.py", "overrides": []},
            "runs": [{"name": matrix_lib.run_name(f, o, s), "format": f, "optimizer": o,
                      "seed": s} for f in ("E5M2", "E4M3") for o in ("adamw", "manifold_update")
                     for s in (0, 1, 2, 3)]}
    with open(os.path.join(sweep, "matrix.json"), "w") as f:
        json.dump(plan, f)
    os.makedirs(os.path.join(sweep, "not_a_run"))
    return sweep


def test_load_run_summaries(tmp_path):
    d = _write_run(str(tmp_path), "E5M2__adamw__s1", micro=0.7)
    run = results_lib.load_run(d)
    assert (run.format, run.optimizer, run.seed, run.status) == ("E5M2", "adamw", 1, "completed")
    assert run.dataset == "synthetic" and run.step == 50
    assert run.get("test/micro_f1") == 0.7 and run.get("test/macro_f1") == 0.6
    assert run.get("test_tuned/micro_f1") == pytest.approx(0.71)
    assert run.get("steps_per_s") == 2.0
    # last 20% of 50 logged steps = steps >= 40: stall 0.4 and 0.3
    assert run.get("summary/stall_ratio_tail") == pytest.approx(0.35)
    assert run.get("summary/flip_rate_final") == pytest.approx(0.05)
    assert run.get("summary/windowed_stall_ratio_final") == pytest.approx(0.31)
    assert run.get("summary/rank_effective_mean_final") == 7.5
    assert run.curve[0] == (10, 0.1) and len(run.curve) == 5


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    d = _write_run(str(tmp_path), "E5M2__adamw__s0", extra_line='{"step": 60, "train/loss": ')
    path = os.path.join(d, "metrics.jsonl")
    with pytest.raises(ValueError, match=rf"{path}:7: malformed JSON"):
        results_lib.load_run(d)
    with open(path, "w") as f:
        f.write('{"step": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=rf"{path}:3: expected a JSON object"):
        results_lib.read_jsonl(path)


def test_load_sweep_statuses(tmp_path):
    sweep = _fabricated_sweep(tmp_path)
    os.makedirs(os.path.join(sweep, "E5M2__adamw__s3"))  # started, never finished
    runs = results_lib.load_sweep(sweep)
    assert len(runs) == 16  # the plan; "not_a_run" is ignored
    status = {r.name: r.status for r in runs}
    assert status["E4M3__manifold_update__s2"] == "diverged"
    assert status["E5M2__adamw__s3"] == "incomplete"
    assert status["E4M3__adamw__s3"] == "missing"
    assert sum(s == "completed" for s in status.values()) == 11
    assert [r.format for r in runs][:8] == ["E5M2"] * 8  # plan order
    rows = results_lib.to_rows(runs)
    assert rows[0]["name"] == "E5M2__adamw__s0" and rows[0]["test/micro_f1"] == 0.70
    with pytest.raises(FileNotFoundError):
        results_lib.load_sweep(str(tmp_path / "nope"))


def test_report_contents(tmp_path):
    sweep = _fabricated_sweep(tmp_path)
    path = report_lib.write_report(sweep)
    assert path == os.path.join(sweep, "report.md")
    text = open(path).read()
    assert "SYNTHETIC DATA" in text and "say nothing about EURLEX57K" in text
    paired = text[text.index("### manifold_update − adamw"):text.index("## Test F1")]
    rows = [line for line in paired.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 2 ")]
    assert rows[0].startswith("| 1 | E5M2 | 3 | +0.0250 |") and "**yes**" in rows[0]
    assert rows[1].startswith("| 2 | E4M3 | 2 | +0.0050 |") and "no (CI includes 0)" in rows[1]
    assert "Largest significant gain from manifold_update: **E5M2**" in paired
    # per-format mean ± CI: E5M2 adamw 0.70, 0.71, 0.69 -> 0.7000 ± 4.303*0.01/sqrt(3) = 0.0248;
    # manifold 0.72, 0.74, 0.715 -> s = sqrt(0.00035/2) = 0.01323, ± 4.303*0.01323/sqrt(3) = 0.0329
    assert "| E5M2 | 0.7000 ± 0.0248 (n=3) | 0.7250 ± 0.0329 (n=3) |" in text
    assert "| E4M3 | 0.7100 ± 0.0248 (n=3) | 0.7150 ± 0.4447 (n=2) |" in text
    assert "### Test macro-F1" in text and "| E5M2 | 0.6000 ± 0.0248 (n=3)" in text
    # honest list of runs that did not complete
    assert "`E4M3__manifold_update__s2`: diverged at step 50: 20 consecutive" in text
    assert "`E4M3__adamw__s3`: never started" in text
    for png in ("f1_by_format.png", "stall_by_format.png", "learning_curves.png"):
        assert f"](plots/{png})" in text
        assert os.path.getsize(os.path.join(sweep, "plots", png)) > 1000


def test_report_not_significant_everywhere_and_no_banner_for_real_data(tmp_path):
    sweep = str(tmp_path / "s")
    os.makedirs(sweep)
    for seed, (a, m) in enumerate([(0.70, 0.71), (0.72, 0.70)]):
        _write_run(sweep, f"E4M3__adamw__s{seed}", micro=a, dataset="eurlex57k")
        _write_run(sweep, f"E4M3__manifold_gradient__s{seed}", micro=m, dataset="eurlex57k")
    text = open(report_lib.write_report(sweep, plots=False)).read()
    assert "SYNTHETIC" not in text and "eurlex57k" in text
    assert "No format shows a significant gain from manifold_gradient" in text
    assert "no (CI includes 0)" in text and "plots/" not in text
    assert "None: every planned run completed." in text


def test_report_cli(tmp_path):
    sweep = _fabricated_sweep(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "altgrad_jax.analysis.report",
                           f"--sweep_dir={sweep}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(os.path.join(sweep, "report.md"))
    proc = subprocess.run([sys.executable, "-m", "altgrad_jax.analysis.report",
                           f"--sweep_dir={tmp_path / 'missing'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "does not exist" in proc.stderr


# --------------------------------------------------------------------------------- expansion
def _matrix(**kw):
    c = matrix_config.get_config()
    c.base_config = os.path.join(ROOT, "configs", "smoke.py")
    for k, v in kw.items():
        c[k] = v
    return c


def test_default_matrix_expansion():
    specs = matrix_lib.expand(_matrix())
    assert len(specs) == 10 * 4 * 3
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)
    assert names[:2] == ["E0M7__adamw__s0", "E0M7__adamw__s1"]
    assert "none__manifold_update__s2" in names and "BF16__grid__s1" in names
    assert all(s.workdir == os.path.join("runs/matrix", s.name) for s in specs)
    assert matrix_lib.parse_run_name("E5M2__manifold_update__s12") == (
        "E5M2", "manifold_update", 12)
    assert matrix_lib.parse_run_name("smoke") is None


def test_run_config_applies_preset_overrides_and_axes():
    c = _matrix(formats=("E4M3,none",), optimizers=("manifold_update", "adamw"), seeds=(0, 7),
                overrides=("train.num_steps=3", "quant.activations=E5M2",
                           "optimizer.learning_rate=0.2"), out_dir="out")
    specs = matrix_lib.expand(c, extra_overrides=("diag.rank_every=0",))
    assert [s.name for s in specs] == [
        "E4M3__manifold_update__s0", "E4M3__manifold_update__s7", "E4M3__adamw__s0",
        "E4M3__adamw__s7", "none__manifold_update__s0", "none__manifold_update__s7",
        "none__adamw__s0", "none__adamw__s7"]
    cfg = matrix_lib.run_config(specs[1])
    assert cfg.name == "E4M3__manifold_update__s7"
    assert cfg.quant.weight_format == "E4M3" and cfg.quant.activations == "E5M2"
    assert cfg.train.seed == 7 and cfg.data.seed == 7 and cfg.optimizer.seed == 7
    assert cfg.optimizer.name == "manifold_adamw" and cfg.optimizer.precondition == "update"
    assert cfg.optimizer.unformatted_scale == 0.01
    assert cfg.optimizer.learning_rate == 0.2  # the override comes after the preset
    assert cfg.train.num_steps == 3 and isinstance(cfg.train.num_steps, int)
    assert cfg.diag.rank_every == 0
    assert cfg.model.d_model == 16  # from the base (smoke) config
    base = matrix_lib.load_config_file(c.base_config)
    adamw = matrix_lib.run_config(specs[6], base)
    assert adamw.optimizer.name == "adamw" and adamw.quant.weight_format == "none"
    assert adamw.optimizer.weight_decay == 0.01 and base.name == "smoke"
    with pytest.raises(AttributeError):
        adamw.not_a_field = 1  # locked, like launch.py's configs
    assert [s.cell for s in matrix_lib.select(specs, ["none/adamw/7"])] == ["none/adamw/7"]
    with pytest.raises(ValueError, match="'none/adamw/3' is not a cell.*seeds: \\[0, 7\\]"):
        matrix_lib.select(specs, ["none/adamw/3"])


@pytest.mark.parametrize("kw,match", [
    ({"formats": ("E5M2", "E9M9")}, r"unknown format 'E9M9' in matrix.formats; valid: .*E4M3"),
    ({"optimizers": ("adamw", "lion")},
     r"unknown optimizer preset 'lion'.*valid: adamw, manifold_gradient, manifold_update, grid"),
    ({"overrides": ("train.num_stepz=3",)},
     r"unknown config field 'train.num_stepz' in matrix.overrides; valid fields of train: "
     r".*'num_steps'"),
    ({"overrides": ("trian.num_steps=3",)}, r"no group 'trian'; valid groups: .*'train'"),
    ({"overrides": ("train.num_steps=many",)}, r"cannot parse 'many' for 'train.num_steps'"),
    ({"overrides": ("quant.weight_format=E4M3",)}, r"sets 'quant.weight_format', which the matrix"),
    ({"overrides": ("train.num_steps",)}, r"'group.field=value' strings"),
    ({"seeds": (0, 0)}, r"matrix.seeds has duplicates"),
    ({"seeds": (-1,)}, r"non-negative ints"),
])
def test_expand_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        matrix_lib.expand(_matrix(**kw))


def test_sweep_cli_bad_input_is_one_line_error():
    proc = subprocess.run([sys.executable, "sweep.py", "--config=configs/matrix.py", "--dry_run",
                           "--config.optimizers=adamw,lion"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error: unknown optimizer preset 'lion'") and "adamw" in err[-1]


# ------------------------------------------------------------------------------- end to end
@pytest.mark.standard_promotion
def test_tiny_sweep_end_to_end(tmp_path):
    sys.path.insert(0, ROOT)
    import sweep

    c = _matrix(formats=("E5M2", "none"), optimizers=("adamw",), seeds=(0,),
                overrides=("train.num_steps=2", "train.log_every=1", "train.eval_every=0",
                           "train.checkpoint_every=0", "diag.rank_every=0",
                           "diag.shadow_every=0", "diag.grad_stats=False",
                           "diag.quant_health=False", "train.tune_threshold=False",
                           f"data.cache_dir={str(tmp_path / 'cache')!r}"),
                out_dir=str(tmp_path / "sweep"))
    logs = []
    dry = sweep.run_sweep(c, dry_run=True, log=logs.append)
    assert dry["planned"] == 2 and not os.path.exists(c.out_dir)
    out = sweep.run_sweep(c, log=logs.append)
    assert out["ran"] == ["E5M2__adamw__s0", "none__adamw__s0"] and not out["skipped"]
    plan = json.load(open(os.path.join(c.out_dir, "matrix.json")))
    assert [r["name"] for r in plan["runs"]] == out["ran"]
    assert "train.num_steps=2" in plan["matrix"]["overrides"]
    for name in out["ran"]:
        res = json.load(open(os.path.join(c.out_dir, name, "results.json")))
        assert res["status"] == "completed" and res["step"] == 2
        cfg = json.load(open(os.path.join(c.out_dir, name, "config.json")))
        assert cfg["name"] == name and cfg["train"]["num_steps"] == 2
    assert cfg["quant"]["weight_format"] == "none"
    text = open(out["report"]).read()
    assert "SYNTHETIC DATA" in text and "| E5M2__adamw__s0 | E5M2 | adamw | 0 | completed | 2 |" \
        in text
    for png in ("f1_by_format.png", "macro_f1_by_format.png", "stall_by_format.png",
                "learning_curves.png"):
        assert os.path.getsize(os.path.join(c.out_dir, "plots", png)) > 1000
    again = sweep.run_sweep(c, log=logs.append)
    assert again["skipped"] == ["E5M2__adamw__s0", "none__adamw__s0"] and not again["ran"]
    assert any("E5M2__adamw__s0: completed, skipped" in line for line in logs)


def test_sweep_records_divergence_and_goes_on(tmp_path, monkeypatch):
    """A diverging run is recorded, the next run still runs, and a rerun skips the diverged one
    unless asked to retry (training is replaced by a fake that writes the run folder)."""
    sys.path.insert(0, ROOT)
    import sweep
    from altgrad_jax.train import loop as loop_lib

    calls = []

    def fake_train(config, workdir):
        calls.append(config.name)
        os.makedirs(workdir, exist_ok=True)
        diverge = config.quant.weight_format == "E7M0"
        res = {"status": "diverged" if diverge else "completed", "step": 3,
               "reason": "nan patience" if diverge else ""}
        if not diverge:
            res.update({"test": {"test/micro_f1": 0.5, "test/macro_f1": 0.4},
                        "data_info": {"dataset": "synthetic"}})
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(res, f)
        if diverge:
            raise loop_lib.TrainingDiverged("20 consecutive non-finite losses")
        return res

    monkeypatch.setattr(loop_lib, "train_and_evaluate", fake_train)
    c = _matrix(formats=("E7M0", "E5M2"), optimizers=("adamw",), seeds=(0,),
                out_dir=str(tmp_path / "sweep"))
    out = sweep.run_sweep(c, log=lambda s: None)
    assert calls == ["E7M0__adamw__s0", "E5M2__adamw__s0"]
    assert out["diverged"] == ["E7M0__adamw__s0"] and out["ran"] == ["E5M2__adamw__s0"]
    assert "`E7M0__adamw__s0`: diverged at step 3: nan patience" in open(out["report"]).read()
    assert sweep.run_sweep(c, log=lambda s: None)["skipped"] == [
        "E7M0__adamw__s0", "E5M2__adamw__s0"]
    again = sweep.run_sweep(c, only=("E7M0/adamw/0",), retry_diverged=True, log=lambda s: None)
    assert again["diverged"] == ["E7M0__adamw__s0"] and calls[-1] == "E7M0__adamw__s0"
    assert len(calls) == 3
