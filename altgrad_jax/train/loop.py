"""`train_and_evaluate(config, workdir)`: the whole run, resumable, with a self-describing folder.

Run folder layout (``workdir``)::

    config.json            the full config, written before step 0 (a resume checks it is unchanged)
    data_info.json         dataset name (eurlex57k / synthetic), sizes, label set, truncation rate
    label_vocab.json       label ids in column order (from the train split)
    tokenizer.json         the WordPiece tokenizer (reused on resume / evaluation)
    metrics.jsonl          one line per logged step ("step" explicit, never duplicated on resume)
    checkpoints/ best/ anomaly/   Orbax checkpoints (periodic N latest, best by eval/micro_f1,
                           the state at the first non-finite loss)
    results.json           final validation/test metrics, throughput, wall time, status
    failure_report.md      only when the run stopped on non-finite losses
    events.jsonl           interventions (format fallbacks, rank warnings), one JSON per line

Re-running the same command on the same folder resumes from the newest readable checkpoint and
continues exactly (same data order, same dropout keys, same metrics as an uninterrupted run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from altgrad_jax import data as data_lib
from altgrad_jax import diagnostics as diag_lib
from altgrad_jax import io as io_lib
from altgrad_jax.models import QuantPolicy
from altgrad_jax.quant import format_or_none
from altgrad_jax.train.losses import sigmoid_bce
from altgrad_jax.train.metrics import multilabel_metrics, tune_threshold
from altgrad_jax.train.builders import build_model, build_optimizer, build_policy
from altgrad_jax.train.state import TrainState
from altgrad_jax.train.step import StepOptions, init_diag_state, make_eval_step, make_train_step

# Fields a resumed run may change without being a different experiment.
_RESUME_MUTABLE = ("train.max_steps_this_run", "train.progress_bar", "log.", "data.data_dir",
                   "data.cache_dir")


class TrainingDiverged(RuntimeError):
    """Raised (and reported without a traceback by launch.py) when NaN patience runs out."""


def _flatten(d: Any, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_config_unchanged(path: str, config_dict: dict) -> None:
    with open(path) as f:
        old = json.load(f)
    new_flat, old_flat = _flatten(json.loads(json.dumps(config_dict))), _flatten(old)
    changed = sorted(k for k in set(new_flat) | set(old_flat)
                     if new_flat.get(k) != old_flat.get(k)
                     and not any(k == m or (m.endswith(".") and k.startswith(m))
                                 for m in _RESUME_MUTABLE))
    if changed:
        details = ", ".join(f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in changed)
        raise ValueError(
            f"the run folder {os.path.dirname(path)} holds a run with a different config "
            f"({details}); resuming would mix two experiments. Use a new --workdir, or restore the "
            "original values.")


def _score(probs: np.ndarray, dataset, prefix: str,
           threshold: float | np.ndarray = 0.5) -> dict:
    """Classification metrics of already computed probabilities (no model call)."""
    m = multilabel_metrics(probs, np.asarray(dataset.labels), threshold=threshold)
    return {f"{prefix}/{k}": float(v) for k, v in m.items()}


def _evaluate(eval_step, params, dataset, batch_size: int, prefix: str,
              threshold: float | np.ndarray = 0.5) -> tuple[dict, np.ndarray]:
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
    out = _score(probs_np, dataset, prefix, threshold)
    out[f"{prefix}/loss"] = losses / max(n, 1)
    out[f"{prefix}/samples_per_s"] = n / max(elapsed, 1e-9)
    return out, probs_np


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(io_lib.to_json_compatible(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _append_event(workdir: str, event: dict) -> None:
    with open(os.path.join(workdir, "events.jsonl"), "a") as f:
        f.write(json.dumps(io_lib.to_json_compatible(event)) + "\n")


def default_workdir(config: ml_collections.ConfigDict) -> str:
    return os.path.join("runs", str(config.name))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
    """Trains, evaluates and writes the run folder; returns the results dict (also results.json).

    Raises:
      TrainingDiverged: after ``train.nan_patience`` consecutive non-finite losses (the failure
        report, an anomaly checkpoint and results.json with ``status="diverged"`` are written first).
      ValueError / FileNotFoundError: for bad config values or missing data, with the fix named.
    """
    workdir = os.path.abspath(workdir or default_workdir(config))
    os.makedirs(workdir, exist_ok=True)
    wall_start = time.time()
    config_dict = config.to_dict()
    config_path = os.path.join(workdir, "config.json")
    ckpt = io_lib.Checkpointer(workdir, max_to_keep=int(config.train.keep_checkpoints),
                               best_metric="eval/micro_f1")
    resuming = ckpt.latest_step() is not None
    if resuming and os.path.exists(config_path):
        _check_config_unchanged(config_path, config_dict)
    _write_json(config_path, config_dict)

    # ---------------------------------------------------------------------------------- data
    bundle = data_lib.build_data(config.data, workdir)
    logging.info("data: %s", json.dumps(io_lib.to_json_compatible(bundle.info))[:2000])

    # ------------------------------------------------------------------------ model, optimizer
    num_steps = int(config.train.num_steps)
    if num_steps < 1:
        raise ValueError(f"train.num_steps must be >= 1, got {num_steps}")
    policy = build_policy(config.quant)
    fallback = None
    fallback_path = os.path.join(workdir, "fallback.json")
    if config.stability.fallback and policy.weights.default is not None:
        fallback = diag_lib.FallbackController(
            str(config.quant.weight_format),
            stall_threshold=float(config.stability.fallback_stall_threshold),
            window=int(config.diag.stall_window),
            min_step=max(int(config.stability.fallback_min_step), 1))
        if resuming and os.path.exists(fallback_path):  # rebuild the format the run had reached
            with open(fallback_path) as f:
                fallback.load_state_dict(json.load(f))
            for ev in fallback.events:
                policy = dataclasses.replace(policy, weights=diag_lib.apply_fallback_to_rules(
                    policy.weights, ev.from_format, ev.to_format))
    options = StepOptions(pos_weight=float(config.train.pos_weight),
                          skip_nonfinite=bool(config.train.skip_nonfinite),
                          flips=bool(config.diag.flips), log_every=int(config.train.log_every),
                          num_steps=num_steps,
                          grad_stats=bool(config.diag.grad_stats),
                          quant_health=bool(config.diag.quant_health),
                          dead_threshold=float(config.diag.dead_threshold))
    grad_format = format_or_none(config.quant.gradients)
    vocab_size = bundle.tokenizer.get_vocab_size()

    def build(policy):
        """Model, optimizer and compiled steps for a policy (again after a format fallback)."""
        model = build_model(config, vocab_size=vocab_size, num_labels=bundle.num_labels,
                            policy=policy)
        tx, lr_schedule = build_optimizer(config, policy.weights.lookup, num_steps)
        train_step = make_train_step(model=model, tx=tx, format_fn=policy.weights.lookup,
                                     lr_schedule=lr_schedule, grad_format=grad_format,
                                     options=options)
        return model, tx, train_step, make_eval_step(model, float(config.train.pos_weight))

    model, tx, train_step, eval_step = build(policy)
    key = jax.random.key(int(config.train.seed))
    init_key, dropout_key = jax.random.split(key)
    dummy = jnp.zeros((1, config.data.max_length), jnp.int32)
    params = jax.jit(lambda k: model.init(k, dummy)["params"])(init_key)
    state = TrainState.create(params=params, opt_state=tx.init(params), rng_key=dropout_key,
                              diag=init_diag_state(options, int(config.diag.stall_window)))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    train_iter = data_lib.BatchIterator(bundle.train, int(config.train.batch_size),
                                        seed=int(config.data.seed))
    extra: dict = {}
    restored = ckpt.restore_latest(state)
    if restored is not None:
        start_step, state, extra = restored
        train_iter.restore(extra["data_iter"])
        logging.info("resumed from step %d in %s", start_step, workdir)
    start_step = int(state.step)
    elapsed_before = float(extra.get("train_time_s", 0.0))
    rank_detector = diag_lib.RankTrendDetector(
        warmup_steps=int(config.diag.rank_warmup_steps), decay=float(config.diag.rank_ema),
        critical_patterns=tuple(config.diag.rank_critical_patterns),
        critical_threshold=float(config.diag.rank_critical_drop),
        threshold=float(config.diag.rank_drop))
    if "rank_detector" in extra:
        rank_detector.load_state_dict(extra["rank_detector"])

    writers = io_lib.make_writers(workdir, wandb_mode=config.log.wandb_mode,
                                  wandb_project=config.log.wandb_project, run_name=config.name,
                                  config=config_dict, resume_step=start_step if resuming else None)
    fp32_model = build_model(config, vocab_size=vocab_size, num_labels=bundle.num_labels,
                             policy=QuantPolicy())

    def build_shadow(model):
        """FP32 shadow: the same batch through an unquantized copy of the model."""
        if int(config.diag.shadow_every) <= 0:
            return None

        def loss(m):
            return lambda p, b: sigmoid_bce(m.apply({"params": p}, b["input_ids"]), b["labels"],
                                            pos_weight=float(config.train.pos_weight))
        return diag_lib.make_fp32_shadow_fn(loss(model), loss(fp32_model))

    shadow_fn = build_shadow(model)
    rank_fn = (diag_lib.make_rank_health_fn(exclude=config.diag.rank_exclude or None)
               if int(config.diag.rank_every) > 0 else None)
    status = "completed"
    bar = io_lib.ProgressBar(total=num_steps, initial=start_step,
                             disable=None if config.train.progress_bar else True)
    log_every = max(int(config.train.log_every), 1)
    eval_every = int(config.train.eval_every)
    ckpt_every = int(config.train.checkpoint_every)
    max_this_run = int(config.train.max_steps_this_run)
    batch_size = int(config.train.batch_size)

    def make_extra(train_time):
        # Losses of the current (unfinished) log window, so train/loss_avg is exact on resume.
        pending = [float(x) for x in jax.device_get(losses)]
        return {"data_iter": train_iter.state(), "train_time_s": train_time,
                "rank_detector": rank_detector.state_dict(), "pending_losses": pending}

    step = start_step
    steps_this_run = 0
    train_time = elapsed_before
    window_t0, window_steps, window_tokens = time.perf_counter(), 0, 0
    losses = list(extra.get("pending_losses", []))
    last_metrics: dict = {}
    try:
        while step < num_steps:
            np_batch = next(train_iter)
            batch = {k: jnp.asarray(v) for k, v in np_batch.items()}
            state, metrics = train_step(state, batch)
            step += 1
            steps_this_run += 1
            window_steps += 1
            window_tokens += int((np_batch["input_ids"] != 0).sum())
            losses.append(metrics["train/loss"])
            bar.update(1)

            if step % log_every == 0 or step == num_steps:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                mean_loss = np.asarray(jax.device_get(losses), np.float64)
                host["train/loss_avg"] = float(np.mean(mean_loss[np.isfinite(mean_loss)])) if \
                    np.isfinite(mean_loss).any() else float("nan")
                losses = []
                dt = time.perf_counter() - window_t0
                # The first window of a process includes compilation; it is reported but marked.
                host["perf/steps_per_s"] = window_steps / dt
                host["perf/samples_per_s"] = window_steps * batch_size / dt
                host["perf/tokens_per_s"] = window_tokens / dt
                host["perf/includes_compile"] = float(steps_this_run == window_steps)
                train_time += dt
                window_t0, window_steps, window_tokens = time.perf_counter(), 0, 0
                writers.write(step, host)
                last_metrics = host
                bar.update(0, loss=host["train/loss"], steps_per_s=host["perf/steps_per_s"])
                streak = int(state.nonfinite_streak)
                first_bad = int(state.first_nonfinite_step)
                if first_bad >= 0:
                    ckpt.save_anomaly(step, state, extra=make_extra(train_time))
                event = None if fallback is None else fallback.check(
                    step, nan_stop=streak >= int(config.train.nan_patience),
                    windowed_stall=host.get("diag/windowed_stall_ratio", 0.0))
                if event is not None:
                    # Switch format: new rules, model, optimizer state, counters and windows.
                    policy = dataclasses.replace(policy, weights=diag_lib.apply_fallback_to_rules(
                        policy.weights, event.from_format, event.to_format))
                    model, tx, train_step, eval_step = build(policy)
                    shadow_fn = build_shadow(model)
                    state = state.replace(
                        opt_state=tx.init(state.params), diag=init_diag_state(
                            options, int(config.diag.stall_window)),
                        nonfinite_streak=jnp.zeros((), jnp.int32))
                    record = {"type": "format_fallback", **event.to_dict()}
                    _append_event(workdir, record)
                    _write_json(fallback_path, fallback.state_dict())
                    writers.write(step, {"stability/fallback_events": float(len(fallback.events))})
                    logging.warning("format fallback at step %d: %s", step, record)
                    streak = 0
                if streak >= int(config.train.nan_patience):
                    status = "diverged"
                    raise TrainingDiverged(
                        f"{streak} consecutive non-finite losses (patience "
                        f"{config.train.nan_patience}); first at step {first_bad}. See "
                        f"{os.path.join(workdir, 'failure_report.md')}")

            if rank_fn is not None and step % int(config.diag.rank_every) == 0:
                rank = {k: float(v) for k, v in jax.device_get(rank_fn(state.params)).items()}
                warnings_ = rank_detector.update(step, rank)
                rank.update(rank_detector.metrics())
                for w in warnings_:
                    _append_event(workdir, {"type": "rank_warning", **w})
                rank["rank/warnings"] = float(len(warnings_))
                writers.write(step, rank)

            if shadow_fn is not None and step % int(config.diag.shadow_every) == 0:
                shadow = jax.device_get(shadow_fn(state.params, batch))
                writers.write(step, {k: float(v) for k, v in shadow.items()})

            if eval_every > 0 and step % eval_every == 0 and step < num_steps:
                ev, _ = _evaluate(eval_step, state.params, bundle.validation,
                                  int(config.train.eval_batch_size), "eval")
                writers.write(step, ev)
                ckpt.save_best(step, state, make_extra(train_time), ev["eval/micro_f1"])

            if ckpt_every > 0 and step % ckpt_every == 0 and step < num_steps:
                ckpt.save(step, state, extra=make_extra(train_time))

            if max_this_run > 0 and steps_this_run >= max_this_run and step < num_steps:
                status = "interrupted"
                ckpt.save(step, state, extra=make_extra(train_time), force=True)
                logging.info("stopping after %d steps this run (train.max_steps_this_run); "
                             "rerun the same command to resume from step %d", steps_this_run, step)
                break
    except TrainingDiverged as e:
        report = os.path.join(workdir, "failure_report.md")
        diag_lib.write_failure_report(
            report, format_name=str(fallback.current if fallback is not None
                                    else config.quant.weight_format), step=step, reason=str(e),
            last_metrics=last_metrics, config_dict=config_dict,
            worst_layers=diag_lib.worst_layers(last_metrics, "diag/stall_ratio/"))
        ckpt.save(step, state, extra=make_extra(train_time), force=True)
        results = {"status": status, "step": step, "reason": str(e), "workdir": workdir}
        _write_json(os.path.join(workdir, "results.json"), results)
        writers.close()
        bar.close()
        ckpt.close()
        raise
    bar.close()

    results: dict = {"status": status, "step": step, "num_params": num_params,
                     "dataset": bundle.info.get("dataset"), "workdir": workdir}
    if status == "completed":
        ckpt.save(step, state, extra=make_extra(train_time), force=True)
        eval_bs = int(config.train.eval_batch_size)
        val, val_probs = _evaluate(eval_step, state.params, bundle.validation, eval_bs, "eval")
        writers.write(step, val)
        ckpt.save_best(step, state, make_extra(train_time), val["eval/micro_f1"])
        best = ckpt.restore_best(state)
        best_step, best_params = (best[0], best[1].params) if best else (step, state.params)
        best_val = val
        if best_step != step:  # the final params were just evaluated; only an older best needs it
            best_val, val_probs = _evaluate(eval_step, best_params, bundle.validation, eval_bs,
                                            "eval")
        test, test_probs = _evaluate(eval_step, best_params, bundle.test, eval_bs, "test")
        results.update({"best_step": best_step, "validation": best_val, "test": test})
        if config.train.tune_threshold:
            thr, thr_f1 = tune_threshold(val_probs, np.asarray(bundle.validation.labels))
            # The threshold changes only the decisions: score the same test probabilities again.
            tuned = _score(test_probs, bundle.test, "test_tuned", thr)
            tuned["test_tuned/loss"] = test["test/loss"]
            tuned["test_tuned/samples_per_s"] = test["test/samples_per_s"]
            results.update({"threshold": float(thr), "validation_tuned_micro_f1": float(thr_f1),
                            "test_tuned": tuned})
        final = {**{f"final/{k}": v for k, v in test.items()}}
        writers.write(step, final)
    steps_done = step - start_step
    results.update({
        "train_time_s": train_time,
        "wall_time_s": time.time() - wall_start,
        "steps_per_s": (step / train_time) if train_time > 0 else None,
        "samples_per_s": (step * batch_size / train_time) if train_time > 0 else None,
        "steps_this_run": steps_done,
        "fallback_events": [] if fallback is None else [e.to_dict() for e in fallback.events],
        "data_info": bundle.info,
    })
    _write_json(os.path.join(workdir, "results.json"), results)
    writers.close()
    ckpt.close()
    return results
