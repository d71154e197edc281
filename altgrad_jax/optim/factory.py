"""`make_optimizer(config, formats)`: the optimizer (and its schedule) named by a config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from altgrad_jax.optim import _util
from altgrad_jax.optim.diagnostics import with_grid_diagnostics
from altgrad_jax.optim.grid import grid_optimizer, snap_to_grid
from altgrad_jax.optim.manifold_adamw import manifold_adamw_core

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")

_DEFAULTS = dict(
    learning_rate=1e-3, schedule="constant", warmup_steps=None, warmup_frac=0.0, total_steps=None,
    b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0, precondition="gradient",
    mantissa_bits=None, max_stiffness=1e6, momentum=0.9, rung_clip=10, rounding="stochastic",
    seed=0, weights_on_grid=False, inject_hyperparams=False, track_bit_position=True,
    unformatted_scale=1.0)


def _get(config: Any, name: str) -> Any:
    if hasattr(config, "get"):
        value = config.get(name, _DEFAULTS[name])
    else:
        value = getattr(config, name, _DEFAULTS[name])
    return _DEFAULTS[name] if value is None and _DEFAULTS[name] is not None else value


def make_schedule(config: Any) -> Callable[[Any], Any]:
    """The learning-rate schedule of ``config`` (see `make_optimizer` for the fields)."""
    peak = _get(config, "learning_rate")
    _util.check_number("learning_rate", peak, lo=0.0)
    kind = _get(config, "schedule")
    _util.check_choice("schedule", kind, SCHEDULES)
    if kind == "constant":
        return optax.constant_schedule(peak)
    total = _get(config, "total_steps")
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        raise ValueError(f"total_steps must be a positive int for schedule={kind!r}, got {total!r}")
    warmup = _get(config, "warmup_steps")
    if warmup is None:
        frac = _get(config, "warmup_frac")
        _util.check_number("warmup_frac", frac, lo=0.0, hi=1.0)
        warmup = int(round(frac * total))
    if not isinstance(warmup, int) or not 0 <= warmup <= total:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps={total}], got {warmup!r}")
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)),
         optax.linear_schedule(peak, 0.0, max(total - warmup, 1))], [warmup])


def _adamw(c, lr, formats):
    def factory(learning_rate, b1, b2, eps, weight_decay):
        return optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay)
    return factory, dict(learning_rate=lr, b1=_get(c, "b1"), b2=_get(c, "b2"), eps=_get(c, "eps"),
                         weight_decay=_get(c, "weight_decay")), ()


def _manifold(c, lr, formats):
    mbits = _get(c, "mantissa_bits") or None
    precondition = _get(c, "precondition")
    if precondition != "gradient":
        mbits = None
    kw = dict(learning_rate=lr, b1=_get(c, "b1"), b2=_get(c, "b2"), eps=_get(c, "eps"),
              weight_decay=_get(c, "weight_decay"), mantissa_bits=mbits, formats=formats,
              precondition=precondition, max_stiffness=_get(c, "max_stiffness"))
    if precondition == "update":
        kw["unformatted_scale"] = float(_get(c, "unformatted_scale"))
    return manifold_adamw_core, kw, ("mantissa_bits", "formats", "precondition",
                                     "unformatted_scale")


def _grid(c, lr, formats):
    kw = dict(learning_rate=lr, formats=formats, momentum=_get(c, "momentum"),
              weight_decay=_get(c, "weight_decay"), rung_clip=_get(c, "rung_clip"),
              rounding=_get(c, "rounding"), seed=_get(c, "seed"),
              track_bit_position=_get(c, "track_bit_position"))
    return grid_optimizer, kw, ("formats", "rounding", "seed", "track_bit_position")


def _sgd(c, lr, formats):
    def factory(learning_rate, momentum, weight_decay):
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           optax.sgd(learning_rate, momentum=momentum))
    return factory, dict(learning_rate=lr, momentum=_get(c, "momentum"),
                         weight_decay=_get(c, "weight_decay")), ()


OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "adamw": _adamw, "manifold_adamw": _manifold, "grid": _grid, "sgd": _sgd}


def _looks_like_params(tree: Any) -> bool:
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves)


def make_optimizer(config: Any, params_or_formats: Any = None
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """Builds the optimizer named by ``config`` and its learning-rate schedule.

    Config fields (an ``ml_collections.ConfigDict`` or any object with these attributes; missing
    fields take the default in brackets)::

      name               "adamw" | "manifold_adamw" | "grid" | "sgd"                [required]
      learning_rate      peak learning rate (grid steps for precondition="update")   [1e-3]
      schedule           "constant" | "warmup_cosine" | "warmup_linear"             ["constant"]
      warmup_steps       linear warmup steps from 0; None -> warmup_frac * total     [None]
      warmup_frac        warmup as a fraction of total_steps                        [0.0]
      total_steps        schedule length (required unless schedule="constant")      [None]
      b1, b2, eps        Adam moments' decays and epsilon                   [0.9, 0.999, 1e-8]
      weight_decay       AdamW decoupled decay; coupled (added to g) for grid/sgd   [0.0]
      grad_clip_norm     clip_by_global_norm before the optimizer; 0 = off          [0.0]
      precondition       manifold_adamw: "gradient" | "update" | "none"            ["gradient"]
      mantissa_bits      manifold_adamw "gradient": M for all leaves; 0/None = from formats
      max_stiffness      manifold_adamw "gradient": clamp of the stiffness          [1e6]
      unformatted_scale  manifold_adamw "update": step factor of float32 leaves     [1.0]
      momentum           grid / sgd momentum (0 = none for sgd)                     [0.9]
      rung_clip          grid: most rungs per step                                  [10]
      rounding           grid (rung rounding) and snap_to_grid: "stochastic" | "nearest"
                                                                                    ["stochastic"]
      seed               PRNG seed of stochastic rounding                           [0]
      weights_on_grid    append snap_to_grid(formats, rounding, seed) (regime (b))  [False]
      inject_hyperparams wrap in optax.inject_hyperparams (lr readable in state)    [False]
      track_bit_position per-element cumulative bit position in the diagnostics     [True]

    Every optimizer carries the grid diagnostics (`with_grid_diagnostics`, or the grid
    optimizer's own), so `altgrad_jax.optim.metrics` gives the same keys for A/B runs. The chain
    is ``with_grid_diagnostics(chain(clip_by_global_norm, <optimizer>, snap_to_grid))`` with the
    optional links left out; for ``name="grid"`` it is ``chain(clip_by_global_norm, grid)``
    (``weights_on_grid`` is implied).

    Args:
      config: the optimizer config (fields above).
      params_or_formats: the per-leaf formats (pytree of FloatFormat/name/None, callable
        ``path -> format``, `PrecisionRules`, one format) or None; a params pytree (array leaves)
        is accepted and means "no formats" (float32 everywhere).

    Returns:
      ``(tx, schedule)``: the `optax.GradientTransformation` and the learning-rate schedule.

    Raises:
      ValueError: for an unknown name (listing the valid ones) or a bad field.

    Example:
      >>> import ml_collections, jax.numpy as jnp
      >>> c = ml_collections.ConfigDict(dict(name="manifold_adamw", learning_rate=1e-3,
      ...     schedule="warmup_cosine", warmup_frac=0.05, total_steps=100, mantissa_bits=3))
      >>> tx, sched = make_optimizer(c, "E4M3")
      >>> state = tx.init({"w": jnp.ones(3)}); round(float(sched(5)), 6)
      0.001
    """
    name = _get_name(config)
    builder = OPTIMIZERS.get(name)
    if builder is None:
        raise ValueError(f"unknown optimizer name {name!r}; valid names: {sorted(OPTIMIZERS)}")
    formats = None if _looks_like_params(params_or_formats) else params_or_formats
    schedule = make_schedule(config)
    clip = _get(config, "grad_clip_norm") or 0.0
    _util.check_number("grad_clip_norm", clip, lo=0.0)
    on_grid = bool(_get(config, "weights_on_grid"))
    if on_grid and formats is None:
        raise ValueError("weights_on_grid=True needs formats")
    factory, kwargs, static = builder(config, schedule, formats)

    if _get(config, "inject_hyperparams"):
        tx = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
    else:
        tx = factory(**kwargs)
    links = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    if name == "grid":  # carries its own diagnostics; its weights are on the grid already
        return (optax.chain(*links, tx) if links else tx), schedule
    links.append(tx)
    if on_grid:
        links.append(snap_to_grid(formats, rounding=_get(config, "rounding"),
                                  seed=_get(config, "seed")))
    inner = links[0] if len(links) == 1 else optax.chain(*links)
    tx = with_grid_diagnostics(inner, formats,
                               track_bit_position=_get(config, "track_bit_position"))
    return tx, schedule


def _get_name(config: Any) -> str:
    name = config.get("name", None) if hasattr(config, "get") else getattr(config, "name", None)
    if not isinstance(name, str):
        raise ValueError(f"config.name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return name
