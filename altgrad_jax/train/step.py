"""Pure train / diagnostics / eval steps: ``step(state, batch) -> (state, metrics)``.

Two compiled programs advance training, and they apply the SAME update:

* `train_step`, the hot path: forward, backward, the optimizer update, a skip of non-finite steps,
  and a handful of scalars (loss, norms, learning rate). It computes no flips, stalls, bit
  positions, gradient statistics or quantization health.
* `diag_step`, run by the loop every ``diag.every`` steps instead of `train_step`: the same update
  plus the grid diagnostics of that step (`flip_stats`, `below_half_step_fraction`,
  `gradient_stats`, `quantization_health`) and the sampled sliding windows.

Windowed figures are estimated from the samples. With samples ``k = 1..K`` (the last ``K =
diag.stall_window`` diagnostics steps, one every ``diag.every`` steps),

.. math::
   \\widehat{\\mathrm{stall}} = \\mathrm{stall\\_ratio}\\Big(\\sum_k \\mathrm{flips}_k,\\;
   \\sum_k \\mathrm{updates}_k\\Big),

the stall ratio of the pooled sampled steps (each step's counts are an unbiased sample of the
steps in its interval when the interval does not resonate with the data order). The windowed dead
gradient fraction is the mean over the same samples.

Static things are bound with `functools.partial`; each step is jitted once with the state donated.
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
    """Static options of the steps (hashable).

    Attributes:
      pos_weight: BCE positive-class weight.
      skip_nonfinite: a step whose loss, gradients or updates are not finite leaves params and
        optimizer state unchanged (the step counter and the dropout key still advance).
      flips: the diagnostics step counts flips / updates / stalls / below-half-step updates.
      grad_stats: the diagnostics step adds gradient statistics and the dead-gradient window.
      quant_health: the diagnostics step adds quantization health.
      dead_threshold: |g| below this counts as a dead gradient.
    """

    pos_weight: float = 1.0
    skip_nonfinite: bool = True
    flips: bool = True
    grad_stats: bool = True
    quant_health: bool = True
    dead_threshold: float = 1e-8


def init_diag_state(options: StepOptions, stall_window: int) -> dict:
    """The diagnostics part of `TrainState`: windows over the last ``stall_window`` samples."""
    out = {}
    if options.flips:
        out["stall"] = diag_lib.init_stall_window(stall_window)
    if options.grad_stats:
        out["dead"] = diag_lib.init_dead_window(stall_window)
    return out


@dataclasses.dataclass(frozen=True)
class _Update:
    loss: jax.Array
    grads: Any
    updates: Any
    state: TrainState
    metrics: dict


def _update(state: TrainState, batch: dict, *, model: nn.Module, tx: optax.GradientTransformation,
            lr_schedule, options: StepOptions) -> _Update:
    """The update both steps share (so the two programs train identically)."""
    rng, dropout_rng = jax.random.split(jax.random.wrap_key_data(state.rng))

    def loss_fn(params):
        logits = model.apply({"params": params}, batch["input_ids"], deterministic=False,
                             rngs={"dropout": dropout_rng})
        return sigmoid_bce(logits, batch["labels"], pos_weight=options.pos_weight)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    grad_norm, update_norm = optax.global_norm(grads), optax.global_norm(updates)
    # A NaN/inf anywhere in the gradients or updates makes its global norm non-finite (an overflow
    # of the squared sum, |g| > ~1e19, counts too: such a step would not be usable either).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    if options.skip_nonfinite:
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_params = jax.tree.map(keep, new_params, state.params)
        new_opt_state = jax.tree.map(keep, new_opt_state, state.opt_state)
    metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
               "train/update_norm": update_norm, "train/param_norm": optax.global_norm(new_params),
               "train/nonfinite": 1.0 - finite.astype(jnp.float32)}
    metrics.update(optim_lib.metrics(new_opt_state))
    metrics.update(diag_lib.clip_metrics(new_opt_state))
    metrics["train/lr"] = _applied_lr(state, metrics, lr_schedule, options)
    streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
    first = jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                      state.first_nonfinite_step)
    new_state = state.replace(
        step=state.step + 1, params=new_params, opt_state=new_opt_state,
        rng=jax.random.key_data(rng), nonfinite_streak=streak,
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        first_nonfinite_step=first)
    return _Update(loss=loss, grads=grads, updates=updates, state=new_state, metrics=metrics)


def _applied_lr(state, metrics, lr_schedule, options):
    """The learning rate of the last applied update.

    With `optax.inject_hyperparams` it is read from the optimizer state (which a skipped step
    leaves unchanged); otherwise the schedule at the number of updates applied so far.
    """
    if "optim/learning_rate" in metrics:
        return metrics["optim/learning_rate"]
    if lr_schedule is None:
        return jnp.float32(jnp.nan)
    applied = state.step - (state.nonfinite_total if options.skip_nonfinite else 0)
    return jnp.asarray(lr_schedule(applied), jnp.float32)


def _as_float32(metrics: dict) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation,
               lr_schedule: Callable[[jax.Array], jax.Array] | None,
               options: StepOptions) -> tuple[TrainState, dict]:
    """One optimizer step on ``batch`` (``input_ids`` [B, L] int32, ``labels`` [B, C] float32)."""
    u = _update(state, batch, model=model, tx=tx, lr_schedule=lr_schedule, options=options)
    return u.state, _as_float32(u.metrics)


def _step_diagnostics(old_params, u: _Update, intended, format_fn, grad_format,
                      options: StepOptions):
    out = {}
    if options.flips:
        out.update(diag_lib.flip_stats(old_params, u.state.params, intended, format_fn))
        out.update(diag_lib.below_half_step_fraction(old_params, intended, format_fn))
    if options.grad_stats:
        out.update(diag_lib.gradient_stats(u.grads, dead_threshold=options.dead_threshold))
    if options.quant_health:
        out.update(diag_lib.quantization_health(old_params, format_fn, grads=u.grads,
                                                grad_format=grad_format))
    return out


def diag_step(state: TrainState, batch: dict, *, model: nn.Module,
              tx: optax.GradientTransformation,
              lr_schedule: Callable[[jax.Array], jax.Array] | None,
              format_fn: Callable[[str], Any], grad_format: Any,
              options: StepOptions,
              intended_tx: optax.GradientTransformation | None = None
              ) -> tuple[TrainState, dict]:
    """`train_step` plus the diagnostics of this step and the sampled windows (module docstring).

    Flips are counted between the params before and after the step; the "updated" coordinates
    (`altgrad_jax.diagnostics.flip_stats`) are those whose *intended* update is non-zero. With
    weights stored on the grid (regime (b)) the applied update is the snapped one, in which an
    update rounded away is zero, so ``intended_tx`` (the optimizer without its snap link, same
    state: ``make_optimizer(..., snap=False)``) supplies the update before rounding; without it
    the applied update is used (regime (a), and the grid optimizer, which has no snap link).
    """
    u = _update(state, batch, model=model, tx=tx, lr_schedule=lr_schedule, options=options)
    intended = u.updates
    if intended_tx is not None:
        intended, _ = intended_tx.update(u.grads, state.opt_state, state.params)
    metrics = {**u.metrics,
               **_step_diagnostics(state.params, u, intended, format_fn, grad_format, options)}
    diag = dict(state.diag)
    if options.flips:
        diag["stall"] = diag_lib.update_stall_window(diag["stall"], metrics["diag/flips"],
                                                     metrics["diag/updates"])
        metrics["diag/windowed_stall_ratio"] = diag_lib.windowed_stall_ratio(diag["stall"])
        metrics["diag/window_full"] = diag_lib.stall_window_full(diag["stall"])
    if options.grad_stats:
        diag["dead"] = diag_lib.update_dead_window(diag["dead"], metrics["grad/dead_frac"])
        metrics["grad/windowed_dead_frac"] = diag_lib.windowed_dead_fraction(diag["dead"])
    return u.state.replace(diag=diag), _as_float32(metrics)


def make_train_step(**kwargs) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step` with its static arguments bound, jitted once, state donated."""
    return jax.jit(functools.partial(train_step, **kwargs), donate_argnums=0)


def make_diag_step(**kwargs) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`diag_step` with its static arguments bound, jitted once, state donated."""
    return jax.jit(functools.partial(diag_step, **kwargs), donate_argnums=0)


def eval_step(params: Any, batch: dict, *, model: nn.Module, pos_weight: float = 1.0):
    """Probabilities and the weighted loss sum of one (padded) eval batch."""
    logits = model.apply({"params": params}, batch["input_ids"], deterministic=True)
    weights = batch["weights"]
    loss = sigmoid_bce(logits, batch["labels"], pos_weight=pos_weight, weights=weights)
    return jax.nn.sigmoid(logits), loss * jnp.sum(weights)


def make_eval_step(model: nn.Module, pos_weight: float = 1.0):
    return jax.jit(functools.partial(eval_step, model=model, pos_weight=pos_weight))
