"""Pure train / eval steps: ``train_step(state, batch) -> (state, metrics)``.

The model, the optimizer and every static choice are bound with `functools.partial` and the step is
jitted once with the state donated (`make_train_step`). Metrics are a flat dict of float32 scalars
with namespaced keys (``train/``, ``optim/``, ``diag/``, ``grad/``, ``quant/``); the loop pulls them to
the host only at its logging interval.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from altgrad_jax import diagnostics as diag_lib
from altgrad_jax import optim as optim_lib
from altgrad_jax.train.losses import sigmoid_bce
from altgrad_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepOptions:
    """Static options of the train step (hashable).

    Attributes:
      pos_weight: BCE positive-class weight.
      skip_nonfinite: a step whose loss is not finite leaves params and optimizer state unchanged.
      flips: the sliding-window stall ratio every step (from the optimizer's flip counts) and the
        per-layer flips / updates / stall ratios / below-half-step fractions at log steps.
      log_every: the step computes the log-time diagnostics (gradient statistics, quantization
        health) only when ``(step + 1) % log_every == 0`` or at the last step ``num_steps``
        (inside a ``lax.cond``), i.e. exactly at the steps the loop logs.
      num_steps: the run's last step (0 = unknown).
      grad_stats: include gradient statistics at log steps.
      quant_health: include quantization health at log steps.
      dead_threshold: |g| below this counts as a dead gradient.
    """

    pos_weight: float = 1.0
    skip_nonfinite: bool = True
    flips: bool = True
    log_every: int = 50
    num_steps: int = 0
    grad_stats: bool = True
    quant_health: bool = True
    dead_threshold: float = 1e-8


def init_diag_state(options: StepOptions, stall_window: int) -> dict:
    """The diagnostics part of `TrainState`: sliding windows of stalls and dead gradients."""
    out = {}
    if options.flips:
        out["stall"] = diag_lib.init_stall_window(stall_window)
    if options.grad_stats:
        out["dead"] = diag_lib.init_dead_window(stall_window)
    return out


def _log_time_diagnostics(params, new_params, grads, updates, format_fn, grad_format,
                          options: StepOptions) -> dict:
    out = {}
    if options.flips:
        out.update(diag_lib.flip_stats(params, new_params, grads, format_fn))
        out.update(diag_lib.below_half_step_fraction(params, updates, format_fn))
    if options.grad_stats:
        out.update(diag_lib.gradient_stats(grads, dead_threshold=options.dead_threshold))
    if options.quant_health:
        out.update(diag_lib.quantization_health(params, format_fn, grads=grads,
                                                grad_format=grad_format))
    return out


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, format_fn: Callable[[str], Any],
               lr_schedule: Callable[[jax.Array], jax.Array] | None, grad_format: Any,
               options: StepOptions) -> tuple[TrainState, dict]:
    """One optimizer step on ``batch`` (``input_ids`` [B, L] int32, ``labels`` [B, C] float32)."""
    rng, dropout_rng = jax.random.split(jax.random.wrap_key_data(state.rng))

    def loss_fn(params):
        logits = model.apply({"params": params}, batch["input_ids"], deterministic=False,
                             rngs={"dropout": dropout_rng})
        return sigmoid_bce(logits, batch["labels"], pos_weight=options.pos_weight)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)

    finite = jnp.isfinite(loss)
    if options.skip_nonfinite:
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_params = jax.tree.map(keep, new_params, state.params)
        new_opt_state = jax.tree.map(keep, new_opt_state, state.opt_state)

    metrics = {
        "train/loss": loss,
        "train/grad_norm": optax.global_norm(grads),
        "train/update_norm": optax.global_norm(updates),
        "train/param_norm": optax.global_norm(new_params),
        "train/nonfinite": 1.0 - finite.astype(jnp.float32),
    }
    if lr_schedule is not None:
        metrics["train/lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
    metrics.update(optim_lib.metrics(new_opt_state))
    metrics.update(diag_lib.clip_metrics(new_opt_state))

    diag = state.diag
    if options.flips:
        # Totals come from the optimizer's own diagnostics (computed every step anyway); the
        # per-layer breakdown is computed only at log steps (below), so nothing is done twice.
        stall = diag_lib.update_stall_window(diag["stall"], metrics["optim/flips"],
                                             metrics["optim/updates"])
        metrics["diag/windowed_stall_ratio"] = diag_lib.windowed_stall_ratio(stall)
        diag = {**diag, "stall": stall}

    if options.grad_stats:  # dead-gradient fraction every step, into a sliding window
        leaves = jax.tree.leaves(grads)
        n_dead = sum(jnp.sum(jnp.abs(g) < options.dead_threshold, dtype=jnp.float32)
                     for g in leaves)
        dead = diag_lib.update_dead_window(diag["dead"],
                                           n_dead / float(sum(g.size for g in leaves)))
        metrics["grad/windowed_dead_frac"] = diag_lib.windowed_dead_fraction(dead)
        diag = {**diag, "dead": dead}

    if options.flips or options.grad_stats or options.quant_health:
        heavy = functools.partial(_log_time_diagnostics, format_fn=format_fn,
                                  grad_format=grad_format, options=options)
        args = (state.params, new_params, grads, updates)
        shapes = jax.eval_shape(heavy, *args)
        zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # noqa: E731
        is_log_step = (((state.step + 1) % options.log_every == 0)
                       | (state.step + 1 == options.num_steps))
        metrics.update(jax.lax.cond(is_log_step, lambda: heavy(*args), zeros))

    streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
    first = jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                      state.first_nonfinite_step)
    new_state = state.replace(
        step=state.step + 1, params=new_params, opt_state=new_opt_state,
        rng=jax.random.key_data(rng), nonfinite_streak=streak,
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        first_nonfinite_step=first, diag=diag)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return new_state, metrics


def make_train_step(**kwargs) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step` with its static arguments bound, jitted once, state donated."""
    return jax.jit(functools.partial(train_step, **kwargs), donate_argnums=0)


def eval_step(params: Any, batch: dict, *, model: nn.Module, pos_weight: float = 1.0):
    """Probabilities and the weighted loss sum of one (padded) eval batch."""
    logits = model.apply({"params": params}, batch["input_ids"], deterministic=True)
    weights = batch["weights"]
    loss = sigmoid_bce(logits, batch["labels"], pos_weight=pos_weight, weights=weights)
    return jax.nn.sigmoid(logits), loss * jnp.sum(weights)


def make_eval_step(model: nn.Module, pos_weight: float = 1.0):
    return jax.jit(functools.partial(eval_step, model=model, pos_weight=pos_weight))
