"""The study protocol: arms registry, stages in run order, tuning applied from records, the dry
run's cost, the sweep's records / skip / retry rules, TEST_MATRIX.md, and one tiny end-to-end
sweep on the synthetic corpus."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from altgrad_jax.analysis import cost as cost_lib
from altgrad_jax.analysis import matrix as matrix_lib
from altgrad_jax.analysis import records as records_lib
from altgrad_jax.analysis import study as study_lib
from altgrad_jax.analysis import matrix_doc as test_matrix_lib
from altgrad_jax.analysis import tuning as tuning_lib
from altgrad_jax.analysis.overrides import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sweep  # noqa: E402
from configs import study_cpu  # noqa: E402

INTERFACE_FIELDS = {  # interfaces.md: the fields an arm may set
    "optimizer.name", "optimizer.learning_rate", "optimizer.weight_decay",
    "optimizer.decay_mask", "optimizer.lr_units", "optimizer.grid_step_multiplier",
    "optimizer.weights_on_grid", "optimizer.rounding", "optimizer.precondition",
    "optimizer.grid_learning_rate", "optimizer.float_learning_rate", "optimizer.grid_weight_decay"}


def _study(tmp_path, stages, base="configs/smoke.py", overrides=()):
    c = study_cpu.get_config()
    c.base_config = os.path.join(ROOT, base)
    c.stages = tuple(stages)
    c.overrides = tuple(overrides)
    c.run_dir = str(tmp_path / "runs")
    c.report_dir = str(tmp_path / "report")
    c.tuning_extensions = 0  # the bracket extension has its own tests
    c.seed_blocks = False  # so has the seed-block order
    return c


# ------------------------------------------------------------------------------------- arms
def test_arms_registry_documents_role_and_regime():
    assert set(matrix_lib.ARMS) == {"adamw", "manifold_gradient", "manifold_update", "adamw_rtn",
                                    "adamw_sr", "ulp_sr", "tensor_sr", "grid"}
    for arm in matrix_lib.ARMS.values():
        assert arm.regime in ("a", "b") and len(arm.role) > 20
        assert set(arm.overrides) <= INTERFACE_FIELDS, arm.name
        assert arm.overrides["optimizer.lr_units"] == "parameter"
        assert arm.tune_field in arm.overrides
        on_grid = arm.overrides.get("optimizer.weights_on_grid", False)
        assert on_grid == (arm.regime == "b" and arm.name != "grid")  # grid stores on its grid
    ulp = {a.name for a in matrix_lib.ARMS.values() if a.tune_field == matrix_lib.C}
    assert ulp == {"manifold_update", "ulp_sr", "tensor_sr"}
    assert matrix_lib.ARMS["adamw_rtn"].overrides["optimizer.rounding"] == "nearest"
    assert matrix_lib.ARMS["ulp_sr"].overrides["optimizer.precondition"] == "update"
    assert matrix_lib.ARMS["tensor_sr"].overrides["optimizer.precondition"] == "tensor"
    assert matrix_lib.ARMS["manifold_gradient"].overrides["optimizer.precondition"] == "gradient"
    assert matrix_lib.regime("adamw", "none") == "fp32"


@pytest.mark.standard_promotion  # optax's schedules mix Python floats and int32 steps
def test_every_arm_builds_an_optimizer_that_steps():
    """Every arm's run config (on configs/default.py) is accepted by make_optimizer and moves a
    small E4M3 tree (the interface fields exist and mean something to the factory)."""
    from altgrad_jax.optim import make_optimizer

    base = load_config_file(os.path.join(ROOT, "configs", "default.py"))
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (16, 16)) * 0.05}
    grads = {"w": jax.random.normal(jax.random.PRNGKey(1), (16, 16))}
    for name in matrix_lib.ARMS:
        spec = matrix_lib.RunSpec(name=f"E4M3__{name}__s1", stage="t", format="E4M3", arm=name,
                                  seed=1, factor=None, workdir="", base_config="",
                                  overrides=tuple(matrix_lib.ARMS[name].overrides.items()))
        opt = ml_collections.ConfigDict(matrix_lib.run_config(spec, base).optimizer.to_dict())
        opt.total_steps = 100  # the loop sets it from train.num_steps
        tx, _ = make_optimizer(opt, "E4M3")
        updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
        assert float(jnp.abs(updates["w"]).max()) > 0, name


# ----------------------------------------------------------------------------------- stages
def test_study_cpu_cells_in_run_order():
    cfg = study_cpu.get_config()
    cfg.base_config = os.path.join(ROOT, "configs", "default.py")
    specs = matrix_lib.expand(cfg)
    stages = list(dict.fromkeys(s.stage for s in specs))
    assert stages[:4] == ["tune_primary", "primary", "tune_reference", "reference"]
    count = {st: sum(s.stage == st for s in specs) for st in stages}
    assert count == {"tune_primary": 18, "primary": 63, "tune_reference": 6, "reference": 3,
                     "reference_bf16": 9,
                     "tune_more": 18, "seeds12": 36, "e1m6": 6, "per_tensor": 18}
    e1m6 = [s for s in specs if s.stage == "e1m6"]  # the check runs its own E0M7 twins
    assert {(s.format, s.seed) for s in e1m6} == {("E1M6", 4), ("E0M7", 4)}
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)
    assert all(s.seed == 0 for s in specs if s.is_tuning)
    assert all(s.seed != 0 for s in specs if not s.is_tuning)  # seed 0 never in the test set
    prim = [s for s in specs if s.stage == "primary"]
    assert {s.format for s in prim} == {"E0M7", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0"}
    assert {s.arm for s in prim} == set(matrix_lib.PRIMARY_ARMS)
    # Every primary cell is gated only by tuning that runs before it (an interrupted study
    # answers the primary contrast first).
    before = {(s.arm) for s in specs[:specs.index(prim[0])] if s.is_tuning}
    assert before == set(matrix_lib.PRIMARY_ARMS)
    assert names[:3] == ["E3M4__adamw_rtn__s0__x1o3", "E3M4__adamw_rtn__s0__x1",
                         "E3M4__adamw_rtn__s0__x3"]
    # seed blocks: all 21 primary cells of seed 1, then seed 2, then seed 3
    assert [s.seed for s in prim] == [1] * 21 + [2] * 21 + [3] * 21
    assert [(s.format, s.arm) for s in prim[:21]] == [(s.format, s.arm) for s in prim[21:42]]
    assert prim[0].name == "E0M7__adamw_rtn__s1" and prim[1].name == "E0M7__adamw_sr__s1"
    assert prim[3].name == "E2M5__adamw_rtn__s1"
    cfg.seed_blocks = False  # cell order: format, arm, seed
    assert [s.name for s in matrix_lib.expand(cfg) if s.stage == "primary"][:2] == [
        "E0M7__adamw_rtn__s1", "E0M7__adamw_rtn__s2"]
    seeds12 = {(s.format, s.arm) for s in specs if s.stage == "seeds12"}
    assert len(seeds12) == 12 and all(matrix_lib.ARMS[a].regime == "a" for _, a in seeds12)
    cfg_run = matrix_lib.run_config(prim[0])
    assert (cfg_run.data.max_length, cfg_run.train.batch_size, cfg_run.train.num_steps) == (
        128, 32, 1000)
    assert (cfg_run.train.eval_every, cfg_run.diag.every, cfg_run.diag.rank_every) == (340, 50,
                                                                                      250)
    assert cfg_run.model.num_layers == 2 and cfg_run.model.d_model == 128
    assert cfg_run.quant.embedding_format == "none" and cfg_run.optimizer.weights_on_grid


@pytest.mark.parametrize("stage,match", [
    ("p | E9M9 | adamw | 1", r"unknown format 'E9M9' in stage 'p'"),
    ("p | E4M3 | lion | 1", r"unknown arm 'lion' in stage 'p'; valid: adamw, "),
    ("p | E4M3 | adamw", r"must be 'name \| formats \| arms \| seeds'"),
    ("p | E4M3 | adamw | 1,1", r"duplicate seeds"),
    ("p | E4M3 | adamw | x", r"seeds must be non-negative ints"),
])
def test_bad_stage_is_one_line_error(stage, match):
    with pytest.raises(ValueError, match=match):
        matrix_lib.parse_stage(stage)


# ----------------------------------------------------------------------------------- tuning
def _record(spec, status="completed", score=None, perf=None):
    return {"name": spec.name, "format": spec.format, "arm": spec.arm, "seed": spec.seed,
            "factor": spec.factor, "stage": spec.stage, "status": status,
            "metrics": {} if score is None else {"eval_tuned/macro_f1": score},
            "perf": perf or {}}


def test_tuning_choice_is_applied_to_later_cells(tmp_path):
    c = _study(tmp_path, ["tune | E3M4,E6M1 | ulp_sr,adamw_sr | 0", "main | E4M3 | ulp_sr | 1"])
    study = study_lib.open_study(c)
    tune = study.tuning_specs
    assert len(tune) == 12
    scores = {"1/3": (0.30, 0.20), "1": (0.32, 0.21), "3": (0.36, 0.10)}  # mean: 1 wins (0.265)
    recs = {}
    for s in tune:
        i = 0 if s.format == "E3M4" else 1
        recs[s.name] = _record(s, score=scores[s.factor][i] + (0 if s.arm == "ulp_sr" else 0.5))
    pending = dict(recs)
    del pending["E6M1__ulp_sr__s0__x3"]
    ch = study.choices(pending)
    assert ch["ulp_sr"].status == "pending" and ch["ulp_sr"].missing == ("E6M1__ulp_sr__s0__x3",)
    assert ch["adamw_sr"].status == "chosen"
    ch = study.choices(recs)
    assert ch["ulp_sr"].factor == "1" and ch["ulp_sr"].scores["1"] == pytest.approx(0.265)
    # a diverged run scores -inf: factor 1 cannot be chosen any more
    recs["E3M4__ulp_sr__s0__x1"] = _record(tune[1], status="diverged")
    assert study.choices(recs)["ulp_sr"].factor == "1/3"  # mean 0.25 vs 0.23 for 3
    main = [s for s in study.specs if s.stage == "main"][0]
    cfg = matrix_lib.run_config(main, study.base,
                                chosen=tuning_lib.chosen_factors(study.choices(recs).values()))
    assert cfg.optimizer.grid_step_multiplier == pytest.approx(1 / 3)
    assert cfg.optimizer.learning_rate == pytest.approx(1e-3)
    t = matrix_lib.run_config(tune[0], study.base)  # tuning cells use their own factor
    assert tune[0].factor == "1/3" and t.optimizer.grid_step_multiplier == pytest.approx(1 / 3)
    # all diverged -> failed; ties go to the factor nearest 1
    all_div = {n: dict(r, status="diverged") for n, r in recs.items()}
    assert study.choices(all_div)["ulp_sr"].status == "failed"
    tie = {n: dict(r, metrics={"eval_tuned/macro_f1": 0.5}) for n, r in recs.items()}
    tie = {n: dict(r, status="completed") for n, r in tie.items()}
    assert study.choices(tie)["adamw_sr"].factor == "1"


def test_format_scope_tunes_each_format_on_its_own(tmp_path):
    """tuning_scope='format': one choice per (arm, format) from that format's own cells, the
    bracket extended on that format only, each test cell at its format's factor and gated by
    its format's tuning; a test format without tuning cells is a clear error."""
    c = _study(tmp_path, ["tune | E0M7,E7M0 | ulp_sr | 0", "main | E0M7,E7M0 | ulp_sr | 1"])
    c.tuning_scope = "format"
    c.tuning_extensions = 1
    study = study_lib.open_study(c)
    # E0M7 peaks inside the bracket (x1); E7M0 at its smallest factor (x1/3), then at x1/9
    f1 = {"E0M7": {"1/3": 0.60, "1": 0.65, "3": 0.62},
          "E7M0": {"1/9": 0.70, "1/3": 0.68, "1": 0.64, "3": 0.50}}
    recs = {s.name: _record(s, score=f1[s.format][s.factor]) for s in study.planned
            if s.is_tuning}
    ch = study.choices(recs)
    assert set(ch) == {"ulp_sr@E0M7", "ulp_sr@E7M0"}
    assert ch["ulp_sr@E0M7"].status == "chosen" and ch["ulp_sr@E0M7"].factor == "1"
    assert ch["ulp_sr@E7M0"].status == "pending"
    assert ch["ulp_sr@E7M0"].missing == ("E7M0__ulp_sr__s0__x1o9",)  # its format only
    main = {s.format: s for s in study.specs if s.stage == "main"}
    states = {f: cost_lib.cell_state(s, recs, ch) for f, s in main.items()}
    assert states == {"E0M7": "todo", "E7M0": "wait_tune"}
    recs["E7M0__ulp_sr__s0__x1o9"] = _record(study.specs[[s.name for s in study.specs].index(
        "E7M0__ulp_sr__s0__x1o9")], score=0.70)
    chosen = tuning_lib.chosen_factors(study.choices(recs).values())
    assert chosen == {"ulp_sr@E0M7": "1", "ulp_sr@E7M0": "1/9"}  # x1/9 at the edge: budget spent
    for f, c_ in (("E0M7", 1.0), ("E7M0", 1 / 9)):
        cfg = matrix_lib.run_config(main[f], study.base, chosen=chosen)
        assert cfg.optimizer.grid_step_multiplier == pytest.approx(c_)
    # the shared scope on the same records: one factor for both (mean over the formats)
    c.tuning_scope = "arm"
    assert set(study_lib.open_study(c).choices(recs)) == {"ulp_sr"}
    c.tuning_scope = "format"
    c.stages = ("tune | E0M7 | ulp_sr | 0", "main | E0M7,E4M3 | ulp_sr | 1")
    with pytest.raises(ValueError, match="E4M3__ulp_sr__s1 have no tuning cells on their format"):
        study_lib.open_study(c)
    c.tuning_scope = "formats"
    with pytest.raises(ValueError, match="tuning_scope must be one of"):
        study_lib.open_study(c)


def test_bracket_extends_at_an_edge_until_the_best_is_inside(tmp_path):
    """A best factor at the edge of the bracket adds the next factor on every tuning format,
    placed after the arm's tuning cells; the later cells wait for it; the rule stops when the
    best is inside the bracket or the extension budget is spent."""
    c = _study(tmp_path, ["tune | E3M4,E6M1 | adamw_rtn,ulp_sr | 0", "main | E4M3 | adamw_rtn | 1"])
    c.tuning_extensions = 2
    study = study_lib.open_study(c)
    assert [s.name for s in study.specs] == [s.name for s in study.planned]  # no records yet
    # validation F1 rising with the lr for adamw_rtn (peak at x9), peaked at x1 for ulp_sr
    f1 = {"adamw_rtn": {"1/3": 0.50, "1": 0.60, "3": 0.70, "9": 0.72, "27": 0.65},
          "ulp_sr": {"1/3": 0.60, "1": 0.65, "3": 0.55}}
    recs = {s.name: _record(s, score=f1[s.arm][s.factor]) for s in study.planned if s.is_tuning}
    ch = study.choices(recs)
    assert ch["ulp_sr"].status == "chosen" and ch["ulp_sr"].factor == "1"
    assert ch["adamw_rtn"].status == "pending"
    assert ch["adamw_rtn"].missing == ("E3M4__adamw_rtn__s0__x9", "E6M1__adamw_rtn__s0__x9")
    names = [s.name for s in study.specs]
    # the added cells follow the arm's last tuning cell, before any later cell
    at = names.index("E6M1__adamw_rtn__s0__x3")
    assert names[at + 1:at + 3] == ["E3M4__adamw_rtn__s0__x9", "E6M1__adamw_rtn__s0__x9"]
    assert names.index("E6M1__adamw_rtn__s0__x9") < names.index("E4M3__adamw_rtn__s1")
    x9 = [s for s in study.specs if s.factor == "9"]
    assert {s.format for s in x9} == {"E3M4", "E6M1"} and all(s.stage == "tune" for s in x9)
    assert matrix_lib.run_config(x9[0], study.base).optimizer.learning_rate == pytest.approx(9e-3)
    assert x9[0].workdir == os.path.join(c.run_dir, "E3M4__adamw_rtn__s0__x9")
    for s in x9:
        recs[s.name] = _record(s, score=f1[s.arm][s.factor])
    ch = study.choices(recs)  # x9 best and again at the edge: x27 added
    assert ch["adamw_rtn"].missing == ("E3M4__adamw_rtn__s0__x27", "E6M1__adamw_rtn__s0__x27")
    for s in study.specs:
        if s.factor == "27":
            recs[s.name] = _record(s, score=f1[s.arm][s.factor])
    ch = study.choices(recs)  # x9 is inside {.., 9, 27}: chosen, nothing more added
    assert ch["adamw_rtn"].status == "chosen" and ch["adamw_rtn"].factor == "9"
    assert len(study.specs) == len(study.planned) + 4
    # the budget: with one extension allowed, x9 is chosen at the edge and nothing more added
    c.tuning_extensions = 1
    ch = study_lib.open_study(c).choices(recs)
    assert ch["adamw_rtn"].factor == "9" and ch["adamw_rtn"].status == "chosen"
    assert tuning_lib.next_factor(["1/3", "1", "3"], "1/3") == "1/9"
    assert tuning_lib.next_factor(["1"], "1") is None  # one factor: no step to continue
    # TEST_MATRIX.md lists the planned cells only (extensions depend on records)
    assert len(study_lib.open_study(c).planned) == len(study.planned)


def test_sweep_runs_the_added_tuning_cells_before_the_arms_later_cells(tmp_path, monkeypatch):
    from altgrad_jax.train import loop as loop_lib

    calls = []
    monkeypatch.setattr(loop_lib, "train_and_evaluate", _fake_train(calls))
    monkeypatch.setattr(sweep, "_rebuild_report", lambda study, log: None)  # not under test
    c = _study(tmp_path, ["tune | E3M4 | adamw_sr | 0", "main | E5M2 | adamw_sr | 1"])
    c.tuning_factors = ("1", "3")
    c.tuning_extensions = 1  # the fake's validation F1 grows with the lr: x3, then x9 wins
    out = sweep.run_sweep(c, log=lambda s: None)
    assert calls == ["E3M4__adamw_sr__s0__x1", "E3M4__adamw_sr__s0__x3", "E3M4__adamw_sr__s0__x9",
                     "E5M2__adamw_sr__s1"]
    assert out["planned"] == 4 and not out["blocked"]
    recs = records_lib.load_records(c.report_dir)
    assert recs["E5M2__adamw_sr__s1"]["applied"]["factor"] == "9"
    assert recs["E5M2__adamw_sr__s1"]["applied"]["value"] == pytest.approx(9e-3)
    plan = json.load(open(os.path.join(c.report_dir, "plan.json")))
    assert plan["chosen"] == {"adamw_sr": "9"} and len(plan["cells"]) == 4
    assert sweep.run_sweep(c, log=lambda s: None)["skipped"] == calls  # nothing reruns


def test_dry_run_order_states_and_cost(tmp_path):
    c = _study(tmp_path, ["tune | E3M4 | ulp_sr | 0", "main | E4M3,E5M2 | ulp_sr | 1,2"],
               overrides=("train.num_steps=1000",))
    study = study_lib.open_study(c)
    lines = study_lib.dry_run_lines(study)
    # 3 x (1000 x 0.57 + 90) s = 0.55 h; 4 x 660 s = 0.73 h
    assert lines[1] == "-- stage tune (3 cells, 0.6 core-hours; 0.6 cumulative)"
    assert "-- stage main (4 cells, 0.7 core-hours; 1.3 cumulative)" in lines
    assert "wait_tune" in lines[6] and "tuning pending" in lines[6]
    # default 0.57 s/step: 7 runs x (1000 x 0.57 + 90) s = 1.283 core-hours
    assert lines[-1].startswith("cost: 0.570 s/step (default") and "total 1.3 core-hours" in \
        lines[-1]
    for s, f in zip(study.tuning_specs, (0.2, 0.3, 0.25)):
        records_lib.write_record(c.report_dir, _record(s, score=f,
                                                       perf={"train_steps_per_s": 2.0}))
    lines = study_lib.dry_run_lines(study)
    # measured 0.5 s/step: total 7 x 590 s = 1.147 h, remaining 4 x 590 s = 0.656 h
    assert "0.500 s/step (measured" in lines[-1] and "total 1.1 core-hours" in lines[-1]
    assert "remaining 0.7 core-hours" in lines[-1] and "done 3" in lines[-2]
    assert "grid_step_multiplier=1 (x1)" in lines[6] and "done" in lines[2]


# ------------------------------------------------------------------------------------ sweep
def _fake_train(calls, diverge=()):
    from altgrad_jax.train import loop as loop_lib

    def fake(config, workdir):
        calls.append(config.name)
        assert not os.path.exists(os.path.join(workdir, "results.json")), "not fresh"
        os.makedirs(workdir, exist_ok=True)
        bad = config.name in diverge
        res = {"status": "diverged" if bad else "completed", "step": 3,
               "reason": "nan patience" if bad else "",
               "validation_tuned": {"eval_tuned/macro_f1": 0.1 + config.optimizer.learning_rate},
               "test_tuned": {"test_tuned/macro_f1": 0.5}, "data_info": {"dataset": "synthetic"},
               "perf": {"train_steps_per_s": 4.0}}
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(res, f)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json())
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 3, "train/loss": 0.5, "diag/stall_ratio": 0.4}) + "\n")
        if bad:
            raise loop_lib.TrainingDiverged("20 consecutive non-finite losses")
        return res
    return fake


def test_sweep_reuses_another_studys_run_of_the_same_program_only(tmp_path, monkeypatch):
    """A cell another study ran with exactly the same program is copied (stage and source
    set, every figure kept), not trained; the same name with another tuned value, other
    overrides or an unfinished source run trains."""
    from altgrad_jax.train import loop as loop_lib

    calls = []
    monkeypatch.setattr(loop_lib, "train_and_evaluate", _fake_train(calls))
    monkeypatch.setattr(sweep, "_rebuild_report", lambda study, log: None)  # not under test
    src = _study(tmp_path / "src", ["tune | E3M4 | adamw_sr | 0",
                                    "main | E5M2,E7M0 | adamw_sr | 1"])
    src.tuning_factors = ("1", "3")  # the fake scores the larger lr higher: x3 chosen
    sweep.run_sweep(src, log=lambda s: None)
    src_recs = records_lib.load_records(src.report_dir)
    src_recs["E7M0__adamw_sr__s1"]["status"] = "diverged"  # an unfinished source run
    records_lib.write_record(src.report_dir, src_recs["E7M0__adamw_sr__s1"])
    calls.clear()
    c = _study(tmp_path / "new", ["tune | E3M4,E6M1 | adamw_sr | 0",
                                  "main | E5M2,E7M0 | adamw_sr | 1"])
    c.tuning_factors = ("1", "3")
    c.reuse_from = (src.report_dir,)
    lines = study_lib.dry_run_lines(study_lib.open_study(c))
    assert sum(" reuse " in ln for ln in lines) == 2 and "reuse 2" in lines[-2]
    out = sweep.run_sweep(c, log=lambda s: None)
    assert out["reused"] == ["E3M4__adamw_sr__s0__x1", "E3M4__adamw_sr__s0__x3",
                             "E5M2__adamw_sr__s1"]  # the last once x3 is chosen (as in src)
    assert calls == ["E6M1__adamw_sr__s0__x1", "E6M1__adamw_sr__s0__x3", "E7M0__adamw_sr__s1"]
    recs = records_lib.load_records(c.report_dir)
    r, s0 = recs["E5M2__adamw_sr__s1"], src_recs["E5M2__adamw_sr__s1"]
    assert r["reused_from"] == src.report_dir and r["stage"] == "main"
    assert r["metrics"] == s0["metrics"] and r["applied"] == s0["applied"]
    assert "reused_from" not in recs["E7M0__adamw_sr__s1"]
    # another override (every cell a different program): nothing is reused
    c2 = _study(tmp_path / "other", ["tune | E3M4 | adamw_sr | 0"],
                overrides=("train.num_steps=4",))
    c2.tuning_factors = ("1", "3")
    c2.reuse_from = (src.report_dir,)
    calls.clear()
    assert sweep.run_sweep(c2, log=lambda s: None)["reused"] == [] and len(calls) == 2
    c2.reuse_from = (str(tmp_path),)
    with pytest.raises(ValueError, match="has no plan.json"):
        study_lib.open_study(c2)


def test_sweep_records_skips_blocks_and_retries(tmp_path, monkeypatch):
    from altgrad_jax.train import loop as loop_lib

    calls = []
    monkeypatch.setattr(loop_lib, "train_and_evaluate",
                        _fake_train(calls, diverge={"E7M0__adamw_sr__s1"}))
    c = _study(tmp_path, ["tune | E3M4 | adamw_sr | 0", "main | E7M0,E5M2 | adamw_sr | 1"])
    c.tuning_factors = ("1", "3")
    # a main cell run before its tuning is blocked
    out = sweep.run_sweep(c, only=("E5M2/adamw_sr/1",), log=lambda s: None)
    assert out["blocked"] == ["E5M2__adamw_sr__s1"] and not calls
    out = sweep.run_sweep(c, log=lambda s: None)
    assert calls == ["E3M4__adamw_sr__s0__x1", "E3M4__adamw_sr__s0__x3", "E7M0__adamw_sr__s1",
                     "E5M2__adamw_sr__s1"]
    assert out["diverged"] == ["E7M0__adamw_sr__s1"]
    recs = records_lib.load_records(c.report_dir)
    assert recs["E5M2__adamw_sr__s1"]["applied"] == {
        "field": "optimizer.learning_rate", "value": pytest.approx(3e-3), "factor": "3"}
    assert recs["E7M0__adamw_sr__s1"]["status"] == "diverged"
    assert recs["E5M2__adamw_sr__s1"]["mechanism"]["diag/stall_ratio"]["last"] == 0.4
    plan = json.load(open(os.path.join(c.report_dir, "plan.json")))
    assert plan["chosen"] == {"adamw_sr": "3"} and len(plan["cells"]) == 4
    assert os.path.exists(os.path.join(c.report_dir, "REPORT.md"))
    # a finished cell is never rerun; a diverged one is skipped unless retried
    assert sweep.run_sweep(c, log=lambda s: None)["skipped"] == [
        "E3M4__adamw_sr__s0__x1", "E3M4__adamw_sr__s0__x3", "E7M0__adamw_sr__s1",
        "E5M2__adamw_sr__s1"]
    assert len(calls) == 4
    again = sweep.run_sweep(c, retry_diverged=True, log=lambda s: None)
    assert again["diverged"] == ["E7M0__adamw_sr__s1"] and calls[-1] == "E7M0__adamw_sr__s1"
    assert len(calls) == 5  # only the diverged one, started fresh (the fake checks it)
    kept = os.path.join(c.run_dir, "E7M0__adamw_sr__s1.diverged-1")
    assert os.path.exists(os.path.join(kept, "results.json"))
    # a record lost but the run folder finished: recorded from the folder, not rerun
    os.remove(records_lib.record_path(c.report_dir, "E5M2__adamw_sr__s1"))
    assert "E5M2__adamw_sr__s1" in sweep.run_sweep(c, log=lambda s: None)["skipped"]
    assert len(calls) == 5 and "E5M2__adamw_sr__s1" in records_lib.load_records(c.report_dir)


def test_sweep_trains_seed_groups_when_configured(tmp_path, monkeypatch):
    from altgrad_jax.train import seeds as seeds_lib

    calls, groups = [], []
    fake = _fake_train(calls)

    def fake_group(configs, workdirs):
        groups.append([c.name for c in configs])
        return [fake(c, w) for c, w in zip(configs, workdirs)]

    monkeypatch.setattr(seeds_lib, "train_seeds_together", fake_group)
    c = _study(tmp_path, ["tune | E3M4 | adamw_sr | 0", "main | E7M0,E5M2 | adamw_sr | 1,2,3"])
    c.tuning_factors = ("1",)
    c.vmap_seeds = 2
    # Another process holds E5M2 seed 2: E5M2's group is seeds 1 and 3.
    os.makedirs(c.run_dir, exist_ok=True)
    with open(os.path.join(c.run_dir, "E5M2__adamw_sr__s2.lock"), "w") as f:
        f.write(str(os.getpid()))
    from altgrad_jax.train import loop as loop_lib
    monkeypatch.setattr(loop_lib, "train_and_evaluate", fake)
    out = sweep.run_sweep(c, log=lambda s: None)
    assert groups == [["E7M0__adamw_sr__s1", "E7M0__adamw_sr__s2"],
                      ["E5M2__adamw_sr__s1", "E5M2__adamw_sr__s3"]]
    # the tuning cell and E7M0 seed 3 (a group of one) ran alone
    assert calls == ["E3M4__adamw_sr__s0__x1", "E7M0__adamw_sr__s1", "E7M0__adamw_sr__s2",
                     "E7M0__adamw_sr__s3", "E5M2__adamw_sr__s1", "E5M2__adamw_sr__s3"]
    assert "E5M2__adamw_sr__s2" in out["claimed"]
    recs = records_lib.load_records(c.report_dir)
    assert {n for n, r in recs.items() if r["status"] == "completed"} == set(calls)


def test_a_claimed_cell_is_left_to_its_process(tmp_path, monkeypatch):
    from altgrad_jax.train import loop as loop_lib

    calls = []
    monkeypatch.setattr(loop_lib, "train_and_evaluate", _fake_train(calls))
    c = _study(tmp_path, ["main | E5M2,E4M3 | adamw | 1"])
    os.makedirs(c.run_dir)
    with open(os.path.join(c.run_dir, "E5M2__adamw__s1.lock"), "w") as f:
        f.write(str(os.getppid()))  # a live process holds it
    with open(os.path.join(c.run_dir, "E4M3__adamw__s1.lock"), "w") as f:
        f.write("999999999")  # stale: taken over
    out = sweep.run_sweep(c, log=lambda s: None)
    assert out["claimed"] == ["E5M2__adamw__s1"] and calls == ["E4M3__adamw__s1"]


def test_a_cell_waits_for_tuning_trained_by_another_process(tmp_path, monkeypatch):
    """Two sweep processes on one study: the one that reaches a later cell while the other still
    trains the arm's tuning run waits for its record instead of skipping the cell."""
    from altgrad_jax.train import loop as loop_lib

    calls = []
    monkeypatch.setattr(loop_lib, "train_and_evaluate", _fake_train(calls))
    c = _study(tmp_path, ["tune | E3M4 | adamw | 0", "main | E5M2 | adamw | 1"])
    c.tuning_factors = ("1",)
    tune = study_lib.open_study(c).tuning_specs[0]
    os.makedirs(c.run_dir)
    lock = os.path.join(c.run_dir, f"{tune.name}.lock")
    with open(lock, "w") as f:
        f.write(str(os.getppid()))  # the other process, alive

    def other_process_finishes(seconds):
        records_lib.write_record(c.report_dir, _record(tune, score=0.3))
        os.remove(lock)

    monkeypatch.setattr(sweep.time, "sleep", other_process_finishes)
    out = sweep.run_sweep(c, log=lambda s: None)
    assert out["claimed"] == [tune.name] and out["ran"] == ["E5M2__adamw__s1"]
    assert calls == ["E5M2__adamw__s1"]


def test_sweep_cli_bad_input_is_one_line_error():
    proc = subprocess.run([sys.executable, "sweep.py", "--config=configs/study_cpu.py",
                           "--dry_run", "--only=E5M2/lion/1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --only entry 'E5M2/lion/1'")


def test_test_matrix_is_generated_from_the_registries():
    text = test_matrix_lib.render("configs/study_cpu.py")
    assert text == test_matrix_lib.render("configs/study_cpu.py")  # deterministic
    assert "| E4M3 | 4 | 3 | 7 | fn | yes | 448 |" in text and "| E5M2 | 5 | 2 | 15 | ieee" in text
    for arm in matrix_lib.ARMS:
        assert f"| {arm} | " in text
    base = load_config_file(os.path.join(ROOT, "configs", "default.py"))
    assert f"| diag.rank_critical_drop | `{base.diag.rank_critical_drop!r}` |" in text
    assert "| primary | E0M7, E2M5, E3M4, E4M3, E5M2, E6M1, E7M0 |" in text
    committed = open(os.path.join(ROOT, "TEST_MATRIX.md")).read()
    assert committed == text, ("TEST_MATRIX.md is stale: regenerate it with " +
                               test_matrix_lib.COMMAND.format(config="configs/study_cpu.py"))


# ------------------------------------------------------------------------------- end to end
@pytest.mark.standard_promotion
def test_tiny_study_end_to_end(tmp_path):
    """One tuning run and one later run of a tiny model on the synthetic corpus: records, the
    chosen factor applied, a report rebuilt from the records, nothing rerun the second time."""
    c = _study(tmp_path, ["tune | E5M2 | adamw_sr | 0", "main | E5M2 | adamw_sr | 1"],
               overrides=("train.num_steps=2", "train.log_every=1", "train.eval_every=0",
                          "train.checkpoint_every=0", "diag.rank_every=0", "diag.every=1",
                          "diag.shadow_every=0", "diag.grad_stats=False",
                          "diag.quant_health=False",
                          f"data.cache_dir={str(tmp_path / 'cache')!r}"))
    c.tuning_factors = ("3",)  # one tuning run keeps the test short; its factor is chosen
    out = sweep.run_sweep(c, log=lambda s: None)
    assert out["ran"] == ["E5M2__adamw_sr__s0__x3", "E5M2__adamw_sr__s1"]
    recs = records_lib.load_records(c.report_dir)
    assert all(r["status"] == "completed" for r in recs.values())
    rec = recs["E5M2__adamw_sr__s1"]
    chosen = json.load(open(os.path.join(c.report_dir, "plan.json")))["chosen"]["adamw_sr"]
    assert chosen == "3"
    assert rec["applied"]["factor"] == chosen
    assert rec["applied"]["value"] == pytest.approx(1e-3 * float(chosen))
    cfg = json.load(open(os.path.join(c.run_dir, "E5M2__adamw_sr__s1", "config.json")))
    assert cfg["optimizer"]["learning_rate"] == pytest.approx(1e-3 * float(chosen))
    assert cfg["optimizer"]["weights_on_grid"] and cfg["quant"]["weight_format"] == "E5M2"
    assert "test_tuned/macro_f1" in rec["metrics"] and rec["dataset"] == "synthetic"
    assert "diag/stall_ratio" in rec["mechanism"] and "train/loss" in rec["curve"]
    assert os.path.getsize(records_lib.record_path(c.report_dir, rec["name"])) < 50_000
    text = open(os.path.join(c.report_dir, "REPORT.md")).read()
    assert "SYNTHETIC DATA" in text and "No primary stage in this study's plan" in text  # tune + main
    assert sweep.run_sweep(c, log=lambda s: None)["ran"] == []
