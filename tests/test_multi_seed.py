"""Several seeds in one vmapped program (altgrad_jax.train.seeds) against separate runs."""

import json
import os

import numpy as np
import pytest

from altgrad_jax.train import loop as loop_lib
from altgrad_jax.train import periodic
from altgrad_jax.train import seeds as seeds_lib
from configs import smoke

pytestmark = pytest.mark.standard_promotion  # optax's schedules mix Python floats and int32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_TOKENIZER = os.path.join(ROOT, "tests", "data", "smoke_tokenizer.json")


def _base(cache_dir):
    c = smoke.get_config()
    c.data.cache_dir = cache_dir
    c.data.tokenizer_file = SMOKE_TOKENIZER
    # Regime (b) with stochastic rounding: the rounding keys live in the optimizer state, so the
    # group must carry one key per seed.
    c.optimizer.weights_on_grid = True
    c.optimizer.rounding = "stochastic"
    c.mesh.vmap_seeds = 2
    return c


def _lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _curve(workdir, key):
    return {ln["step"]: ln[key] for ln in _lines(workdir) if key in ln}


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds apart (train_and_evaluate) and together (interrupted at step 3, resumed)."""
    cache = str(tmp_path_factory.mktemp("cache"))
    root = tmp_path_factory.mktemp("seeds")
    configs = seeds_lib.seed_configs(_base(cache))
    apart = [str(root / f"apart{i}") for i in range(2)]
    for c, w in zip(configs, apart):
        loop_lib.train_and_evaluate(c, w)
    together = seeds_lib.seed_workdirs(str(root / "together"), 2)
    stopped = [seeds_lib.seed_configs(_base(cache))[i] for i in range(2)]
    for c in stopped:
        c.train.max_steps_this_run = 3
    first = seeds_lib.train_seeds_together(stopped, together)
    # The resume: the same configs as the apart runs (max_steps_this_run does not enter the
    # config check), continued from the step-3 checkpoints of both seeds, still as a group.
    second = seeds_lib.train_seeds_together(configs, together)
    return dict(apart=apart, together=together, first=first, second=second, configs=configs)


def test_seed_configs_differ_only_in_their_seed_fields(runs):
    a, b = (c.to_dict() for c in runs["configs"])
    diff = {f"{g}.{k}" for g in a if isinstance(a[g], dict) for k in a[g] if a[g][k] != b[g][k]}
    assert diff == set(seeds_lib.SEED_FIELDS)
    assert [c.train.seed for c in runs["configs"]] == [0, 1]
    assert all(c.mesh.vmap_seeds == 1 for c in runs["configs"])


def test_group_equals_separate_runs(runs):
    for apart, together in zip(runs["apart"], runs["together"]):
        ref, got = _curve(apart, "train/loss"), _curve(together, "train/loss")
        assert sorted(got) == sorted(ref) == [2, 4, 6]
        rel = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
        assert rel <= 1e-5, rel  # float32 summation order of the batched matmuls
        r_ref, r_got = _results(apart), _results(together)
        assert r_got["status"] == r_ref["status"] == "completed"
        assert r_got["test"]["test/loss"] == pytest.approx(r_ref["test"]["test/loss"], rel=1e-5)
        for key in ("diag/flips", "rank/effective_mean"):
            ref_c, got_c = _curve(apart, key), _curve(together, key)
            assert sorted(got_c) == sorted(ref_c) and ref_c
            assert np.allclose([got_c[s] for s in ref_c], list(ref_c.values()), rtol=1e-4)


def test_the_two_seeds_are_different_runs(runs):
    a, b = (_curve(w, "train/loss") for w in runs["together"])
    assert a[6] != b[6]


def test_group_was_interrupted_and_resumed(runs):
    assert [r["status"] for r in runs["first"]] == ["interrupted", "interrupted"]
    assert [r["step"] for r in runs["first"]] == [3, 3]
    assert [r["status"] for r in runs["second"]] == ["completed", "completed"]
    assert all(r["perf"]["vmap_seeds"] == 2 for r in runs["second"])
    for w in runs["together"]:  # every logged step once, in order, across the resume
        steps = [ln["step"] for ln in _lines(w) if "train/loss" in ln]
        assert steps == [2, 4, 6]


def test_rerun_of_a_finished_group_writes_nothing(runs):
    before = [os.path.getmtime(os.path.join(w, "results.json")) for w in runs["together"]]
    again = seeds_lib.train_seeds_together(runs["configs"], runs["together"])
    assert [r["status"] for r in again] == ["completed", "completed"]
    assert before == [os.path.getmtime(os.path.join(w, "results.json"))
                      for w in runs["together"]]


def test_a_diverging_seed_is_finished_and_the_other_goes_on(tmp_path, monkeypatch):
    original = periodic.NonfiniteGuard.__call__

    def guard(self, run, step, metrics):
        if int(run.config.train.seed) == 1 and step == 2:
            run.status = "diverged"
            raise periodic.TrainingDiverged("injected for the test")
        return original(self, run, step, metrics)

    monkeypatch.setattr(periodic.NonfiniteGuard, "__call__", guard)
    configs = seeds_lib.seed_configs(_base(str(tmp_path / "cache")))
    out = seeds_lib.train_seeds_together(configs, seeds_lib.seed_workdirs(str(tmp_path), 2))
    assert out[0]["status"] == "completed" and out[0]["step"] == 6
    assert out[1]["status"] == "diverged" and out[1]["step"] == 2
    assert os.path.exists(tmp_path / "seed1" / "failure_report.md")


def test_configs_that_are_not_one_program_are_refused(tmp_path):
    a, b = seeds_lib.seed_configs(_base(str(tmp_path)))
    b.optimizer.learning_rate = 0.5
    with pytest.raises(ValueError, match=r"optimizer.learning_rate"):
        seeds_lib.train_seeds_together([a, b], [str(tmp_path / "a"), str(tmp_path / "b")])
    a, b = seeds_lib.seed_configs(_base(str(tmp_path)))
    a.stability.fallback = b.stability.fallback = True
    with pytest.raises(ValueError, match="stability.fallback=False"):
        seeds_lib.train_seeds_together([a, b], [str(tmp_path / "a"), str(tmp_path / "b")])
