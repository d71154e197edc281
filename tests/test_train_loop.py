"""The whole loop on the smoke config: run folder, exact resume, NaN path, errors, no recompiles."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax.train import loop as loop_lib
from altgrad_jax.train import step as step_lib
from configs import smoke

pytestmark = pytest.mark.standard_promotion
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
    c = smoke.get_config()
    c.data.cache_dir = overrides.pop("cache_dir")
    for dotted, value in overrides.items():
        obj = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            obj = obj[p]
        obj[leaf] = value
    return c


def _lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _comparable(lines):
    """Metric lines without wall-clock dependent keys."""
    out = []
    for line in lines:
        out.append({k: v for k, v in line.items()
                    if not k.startswith("perf/") and not k.endswith("samples_per_s")})
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir):
    workdir = str(tmp_path_factory.mktemp("full"))
    results = loop_lib.train_and_evaluate(_config(cache_dir=cache_dir), workdir)
    return workdir, results


def test_run_folder_contents(full_run):
    workdir, results = full_run
    for name in ["config.json", "metrics.jsonl", "results.json", "tokenizer.json",
                 "label_vocab.json", "data_info.json", "checkpoints", "best"]:
        assert os.path.exists(os.path.join(workdir, name)), name
    assert results["status"] == "completed" and results["step"] == 6
    assert results["dataset"] == "synthetic"
    with open(os.path.join(workdir, "results.json")) as f:
        on_disk = json.load(f)
    for key in ["micro_f1", "macro_f1", "roc_auc_micro", "pr_auc_macro", "hamming_loss"]:
        assert 0.0 <= on_disk["test"][f"test/{key}"] <= 1.0
    steps = [line["step"] for line in _lines(workdir)]
    assert steps == sorted(steps)
    train_steps = [line["step"] for line in _lines(workdir) if "train/loss" in line]
    assert train_steps == [2, 4, 6] and len(set(train_steps)) == len(train_steps)
    logged = {k for line in _lines(workdir) for k in line}
    for key in ["train/loss", "train/grad_norm", "train/lr", "diag/stall_ratio",
                "diag/windowed_stall_ratio", "grad/windowed_dead_frac", "perf/samples_per_s", "eval/micro_f1",
                "rank/warnings", "shadow/grad_cos_mean", "shadow/loss_gap",
                "diag/stall_ratio/block_0/attn/query/kernel", "quant/grid_error"]:
        assert key in logged, key
    assert any(k.startswith("optim/") for k in logged)
    assert any(k.startswith("quant/") for k in logged)
    assert any(k.startswith("grad/") for k in logged)


def test_resume_after_interruption_is_exact(full_run, tmp_path, cache_dir):
    workdir_full, results_full = full_run
    workdir = str(tmp_path / "resumed")
    first = loop_lib.train_and_evaluate(
        _config(cache_dir=cache_dir, **{"train.max_steps_this_run": 3}), workdir)
    assert first["status"] == "interrupted" and first["step"] == 3
    second = loop_lib.train_and_evaluate(_config(cache_dir=cache_dir), workdir)
    assert second["status"] == "completed" and second["steps_this_run"] == 3
    assert _comparable(_lines(workdir)) == _comparable(_lines(workdir_full))
    assert second["test"]["test/micro_f1"] == results_full["test"]["test/micro_f1"]
    assert second["test"]["test/loss"] == results_full["test"]["test/loss"]


def test_resume_with_a_changed_config_is_refused(full_run, cache_dir):
    workdir, _ = full_run
    with pytest.raises(ValueError, match="optimizer.learning_rate"):
        loop_lib.train_and_evaluate(
            _config(cache_dir=cache_dir, **{"optimizer.learning_rate": 0.5,
                                            "train.num_steps": 8}), workdir)


def test_nan_patience_stops_with_a_report(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(step_lib, "sigmoid_bce", lambda *a, **k: jnp.float32(jnp.nan))
    workdir = str(tmp_path / "nan")
    cfg = _config(cache_dir=cache_dir, **{"train.nan_patience": 3, "train.log_every": 1,
                                          "train.num_steps": 6, "diag.rank_every": 0})
    with pytest.raises(loop_lib.TrainingDiverged, match="3 consecutive non-finite"):
        loop_lib.train_and_evaluate(cfg, workdir)
    report = open(os.path.join(workdir, "failure_report.md")).read()
    assert "non-finite" in report and "E5M2" in report
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["status"] == "diverged"
    assert os.path.isdir(os.path.join(workdir, "anomaly"))


def test_format_fallback_on_stall(tmp_path, cache_dir):
    """E7M0 weights with a tiny learning rate stall; the fallback walks the chain E7M0 -> E5M2 ->
    float32 (the run keeps stalling at lr 1e-7) and the run goes on to completion."""
    workdir = str(tmp_path / "fallback")
    cfg = _config(cache_dir=cache_dir, **{
        "quant.weight_format": "E7M0", "optimizer.learning_rate": 1e-7,
        "stability.fallback": True, "stability.fallback_stall_threshold": 0.5,
        "stability.fallback_min_step": 2, "diag.stall_window": 2, "diag.rank_every": 0,
        "diag.shadow_every": 0})
    results = loop_lib.train_and_evaluate(cfg, workdir)
    assert results["status"] == "completed"
    events = results["fallback_events"]
    assert [(e["from_format"], e["to_format"]) for e in events] == [("E7M0", "E5M2"),
                                                                     ("E5M2", None)]
    assert all(e["reason"] == "stall" for e in events)
    assert 2 <= events[0]["step"] < events[1]["step"]  # never at step 0; a full window each
    with open(os.path.join(workdir, "events.jsonl")) as f:
        assert "format_fallback" in f.read()
    assert any("stability/fallback_events" in line for line in _lines(workdir))


def test_missing_data_dir_error_names_the_fix(tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv("ALTGRAD_DATA_DIR", raising=False)
    cfg = _config(cache_dir=cache_dir, **{"data.source": "jsonl",
                                          "data.data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="ALTGRAD_DATA_DIR"):
        loop_lib.train_and_evaluate(cfg, str(tmp_path / "run"))


def test_launch_rejects_a_misspelt_field(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/smoke.py", "--config.train.num_stepz=3",
         f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "num_stepz" in proc.stderr


def test_train_step_does_not_recompile(cache_dir, tmp_path):
    """The jitted step compiles once (a second call with the same shapes hits the cache), and the
    SVDs of rank health are not in its compiled program."""
    from altgrad_jax import data as data_lib
    from altgrad_jax.train.state import TrainState

    cfg = _config(cache_dir=cache_dir)
    bundle = data_lib.build_data(cfg.data, None)
    policy = loop_lib.build_policy(cfg.quant)
    model = loop_lib.build_model(cfg, vocab_size=bundle.tokenizer.get_vocab_size(),
                                 num_labels=bundle.num_labels, policy=policy)
    tx, sched = loop_lib.build_optimizer(cfg, policy.weights.lookup, 6)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    options = step_lib.StepOptions(log_every=2)
    state = TrainState.create(params=params, opt_state=tx.init(params), rng_key=jax.random.key(1),
                              diag=step_lib.init_diag_state(options, 4))
    fn = step_lib.make_train_step(model=model, tx=tx, format_fn=policy.weights.lookup,
                                  lr_schedule=sched, grad_format=None, options=options)
    it = data_lib.BatchIterator(bundle.train, 8, seed=0)
    for _ in range(3):
        state, metrics = fn(state, {k: jnp.asarray(v) for k, v in next(it).items()})
    assert fn._cache_size() == 1
    assert int(state.step) == 3 and np.isfinite(float(metrics["train/loss"]))

    # Rank health (SVDs) stays off the hot path: the step's program has no SVD, the rank
    # function's program has one (positive control for the pattern).
    from altgrad_jax import diagnostics as diag_lib
    batch = {k: jnp.asarray(v) for k, v in next(it).items()}
    step_hlo = fn.lower(state, batch).as_text().lower()
    rank_hlo = diag_lib.make_rank_health_fn().lower(state.params).as_text().lower()
    assert "svd" in rank_hlo or "gesdd" in rank_hlo
    assert "svd" not in step_hlo and "gesdd" not in step_hlo
