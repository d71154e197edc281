"""Evaluation passes, the final results of a run, and the run folder's JSON files."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from altgrad_jax import data as data_lib
from altgrad_jax import io as io_lib
from altgrad_jax import optim as optim_lib
from altgrad_jax.train.metrics import multilabel_metrics, tune_threshold

# Fields a resumed run may change without being a different experiment.
# The device layout (mesh.data / fsdp) is not the experiment: a run may resume on another device
# count (the float32 numerics agree to rounding; tests/test_parallel.py).
_RESUME_MUTABLE = ("train.max_steps_this_run", "train.progress_bar", "log.", "data.data_dir",
                   "data.cache_dir", "mesh.data", "mesh.fsdp", "mesh.fsdp_min_size", "mesh.vmap_seeds")

# Config fields added after runs existed, with the value that reproduces the code before them: a
# resume accepts a run folder whose config.json lacks the field when the field has this value.
# Every field added from now on goes here with its old-behaviour value.
_ADDED_FIELDS = {"optimizer.float_learning_rate": 0.0, "optimizer.grid_weight_decay": None}


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(io_lib.to_json_compatible(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _flatten(d: Any, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _added_at_old_behaviour(key: str, old_flat: dict, new_flat: dict) -> bool:
    """A field the run's config predates, set to the value that reproduces the code before it."""
    return (key not in old_flat and key in _ADDED_FIELDS
            and new_flat.get(key) == _ADDED_FIELDS[key])


def _resume_mutable(key: str) -> bool:
    """A field (or a field under a ``"group."`` prefix) of ``_RESUME_MUTABLE``."""
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in _RESUME_MUTABLE)


def check_config_unchanged(path: str, config_dict: dict) -> None:
    """Raises ValueError naming the fields when the run folder holds a different experiment.

    Fields in ``_RESUME_MUTABLE`` may change; a field added to the config since the run started
    is accepted at the value that reproduces the old code (``_ADDED_FIELDS``), refused otherwise.
    """
    with open(path) as f:
        old = json.load(f)
    new_flat, old_flat = _flatten(json.loads(json.dumps(config_dict))), _flatten(old)
    changed = sorted(k for k in set(new_flat) | set(old_flat)
                     if new_flat.get(k) != old_flat.get(k)
                     and not _added_at_old_behaviour(k, old_flat, new_flat)
                     and not _resume_mutable(k))
    if changed:
        details = ", ".join(f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in changed)
        raise ValueError(
            f"the run folder {os.path.dirname(path)} holds a run with a different config "
            f"({details}); resuming would mix two experiments. Use a new --workdir, or restore the "
            "original values.")


def completed_results(workdir: str, config) -> dict | None:
    """The results of a completed run of this config in ``workdir`` (else None); prints one line.

    A completed run, run again, writes nothing.
    """
    path = os.path.join(workdir, "results.json")
    config_path = os.path.join(workdir, "config.json")
    if not (os.path.exists(path) and os.path.exists(config_path)):
        return None
    with open(path) as f:
        results = json.load(f)
    if results.get("status") != "completed":
        return None
    check_config_unchanged(config_path, config.to_dict())
    if int(results.get("step", -1)) != int(config.train.num_steps):
        return None
    print(f"run {config.name} is already complete: {path} (nothing written; use a new --workdir "
          "to train again)", flush=True)
    return results


def score(probs: np.ndarray, dataset, prefix: str, threshold: float | np.ndarray = 0.5) -> dict:
    """Classification metrics of already computed probabilities (no model call)."""
    m = multilabel_metrics(probs, np.asarray(dataset.labels), threshold=threshold)
    return {f"{prefix}/{k}": float(v) for k, v in m.items()}


def evaluate(eval_step, params, dataset, batch_size: int, prefix: str,
             threshold: float | np.ndarray = 0.5) -> tuple[dict, np.ndarray]:
    """Metrics and probabilities of ``dataset`` under ``params``."""
    probs, losses, n = [], 0.0, 0
    t0 = time.perf_counter()
    for batch in data_lib.eval_batches(dataset, batch_size):
        p, loss_sum = eval_step(params, {k: jnp.asarray(v) for k, v in batch.items()})
        real = batch["weights"] > 0
        probs.append(np.asarray(p)[real])
        losses += float(loss_sum)
        n += int(real.sum())
    elapsed = time.perf_counter() - t0
    probs_np = np.concatenate(probs, axis=0)
    out = score(probs_np, dataset, prefix, threshold)
    out[f"{prefix}/loss"] = losses / max(n, 1)
    out[f"{prefix}/samples_per_s"] = n / max(elapsed, 1e-9)
    return out, probs_np


def _tuned(run, val_probs, test: dict, test_probs) -> dict:
    """The validation-tuned threshold, scored on validation and on the same test probabilities."""
    thr, thr_f1 = tune_threshold(val_probs, np.asarray(run.bundle.validation.labels))
    val_tuned = score(val_probs, run.bundle.validation, "eval_tuned", thr)
    tuned = score(test_probs, run.bundle.test, "test_tuned", thr)
    tuned["test_tuned/loss"] = test["test/loss"]
    tuned["test_tuned/samples_per_s"] = test["test/samples_per_s"]
    return {"threshold": float(thr), "validation_tuned_micro_f1": float(thr_f1),
            "validation_tuned": val_tuned, "test_tuned": tuned}


def _final_evaluation(run) -> dict:
    """Validation of the final state, the best checkpoint on test, the tuned threshold."""
    step = run.step
    val, val_probs = run.evaluate(run.state.params, "validation", "eval")
    run.writers.write(step, val)
    run.ckpt.save_best(step, run.state, run.extra(), val["eval/micro_f1"])
    best = run.ckpt.restore_best(run.state)
    best_step, best_params = (best[0], best[1].params) if best else (step, run.state.params)
    if best_step != step:  # the final params were just evaluated; only an older best needs it
        val, val_probs = run.evaluate(best_params, "validation", "eval")
    test, test_probs = run.evaluate(best_params, "test", "test")
    out = {"best_step": best_step, "validation": val, "test": test}
    if run.config.train.tune_threshold:
        out.update(_tuned(run, val_probs, test, test_probs))
    run.writers.write(step, {f"final/{k}": v for k, v in test.items()})
    return out


def _calibration(opt_state) -> dict:
    fn = getattr(optim_lib, "calibration_table", None)
    return {} if fn is None else io_lib.to_json_compatible(fn(opt_state))


def final_results(run) -> dict:
    """results.json of a completed or interrupted run (see interfaces: "perf" is training-only)."""
    results: dict = {"status": run.status, "step": run.step, "num_params": run.num_params,
                     "dataset": run.bundle.info.get("dataset"), "workdir": run.workdir}
    if run.status == "completed":
        results.update(_final_evaluation(run))
    perf = run.timer.results()
    results.update({
        "perf": perf, "train_time_s": perf["train_time_s"], "wall_time_s": perf["wall_time_s"],
        "steps_per_s": perf["train_steps_per_s"], "samples_per_s": perf["train_samples_per_s"],
        "steps_this_run": run.step - run.start_step,
        "calibration": _calibration(run.state.opt_state),
        "fallback_events": ([] if run.fallback is None
                            else [e.to_dict() for e in run.fallback.events]),
        "data_info": run.bundle.info, "environment": io_lib.environment()})
    _say_results(run, results)
    return results


def _say_results(run, results: dict) -> None:
    test, tuned = results.get("test", {}), results.get("test_tuned", {})
    perf = results["perf"]
    run.console.line(
        f"{results['status']} at step {results['step']}",
        test_micro_f1=test.get("test/micro_f1"), test_macro_f1=test.get("test/macro_f1"),
        tuned_micro_f1=tuned.get("test_tuned/micro_f1"),
        train_steps_per_s=round(perf["train_steps_per_s"], 2),
        wall_s=round(perf["wall_time_s"], 1))
