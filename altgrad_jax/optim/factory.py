"""`make_optimizer(config, formats)`: the optimizer (and its schedule) named by a config: every arm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.optim import _util, calibration
from altgrad_jax.optim.calibration import calibration_table  # noqa: F401  (doctest)
from altgrad_jax.optim.diagnostics import with_grid_diagnostics
from altgrad_jax.optim.grid import grid_optimizer, snap_to_grid
from altgrad_jax.optim.stiffness import scale_by_stiffness
from altgrad_jax.optim.tensor_spacing import scale_by_tensor_spacing
from altgrad_jax.optim.ulp_scaling import scale_by_ulp

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")

LR_UNITS = calibration.LR_UNITS
DECAY_MASKS = ("ndim>=2", "all")
PRECONDITIONS = ("none", "gradient", "update", "tensor")

_DEFAULTS = dict(
    learning_rate=1e-3, schedule="constant", warmup_steps=None, warmup_frac=0.0, total_steps=None,
    b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0, precondition="gradient",
    mantissa_bits=None, max_stiffness=1e6, momentum=0.9, rung_clip=10, rounding="stochastic",
    seed=0, weights_on_grid=False, inject_hyperparams=False, track_bit_position=True,
    unformatted_scale=1.0, lr_units="parameter", grid_step_multiplier=1.0, decay_mask="ndim>=2",
    diagnostics=False, grid_learning_rate=1.0, float_learning_rate=0.0,
    grid_weight_decay=None)


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


def _ndim_at_least_2(params: Any) -> Any:
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def decay_mask(kind: str) -> Callable[[Any], Any] | None:
    """The weight-decay mask named by ``optimizer.decay_mask``.

    ``"ndim>=2"`` (default): decay only parameters with two or more dimensions (kernels and
    embedding tables; not biases, LayerNorm scales or any other vector), as the seeds' original and
    most transformer recipes do. ``"all"``: decay every parameter (``mask=None``).

    Example:
      >>> import jax.numpy as jnp
      >>> decay_mask("ndim>=2")({"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)})
      {'bias': False, 'kernel': True}
    """
    _util.check_choice("decay_mask", kind, DECAY_MASKS)
    return None if kind == "all" else _ndim_at_least_2


def _adam_kwargs(c, lr):
    return dict(learning_rate=lr, b1=_get(c, "b1"), b2=_get(c, "b2"), eps=_get(c, "eps"),
                weight_decay=_get(c, "weight_decay"))


def _adamw(c, lr, formats):
    mask = decay_mask(_get(c, "decay_mask"))

    def factory(learning_rate, b1, b2, eps, weight_decay):
        return optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay, mask=mask)
    return factory, _adam_kwargs(c, lr), ()


def _manifold(c, lr, formats):
    precondition = _get(c, "precondition")
    mbits = (_get(c, "mantissa_bits") or None) if precondition == "gradient" else None
    if precondition in ("update", "tensor") and formats is None:
        raise ValueError(f"precondition={precondition!r} needs formats (the grid whose spacing "
                         "scales the step): pass the per-leaf formats to make_optimizer")
    mask = decay_mask(_get(c, "decay_mask"))
    calib = dict(multiplier=_get(c, "grid_step_multiplier"), lr_units=_get(c, "lr_units"),
                 unformatted_scale=float(_get(c, "unformatted_scale")))

    def factory(learning_rate, b1, b2, eps, weight_decay, max_stiffness):
        adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
        tail = (optax.add_decayed_weights(weight_decay, mask),
                optax.scale_by_learning_rate(learning_rate))
        if precondition == "gradient":
            return optax.chain(scale_by_stiffness(mbits, formats, max_stiffness=max_stiffness),
                               adam, *tail)
        if precondition == "none":
            return optax.chain(adam, *tail)
        spacing = scale_by_ulp(formats) if precondition == "update" else (
            scale_by_tensor_spacing(formats))
        return optax.chain(adam, spacing, calibration.scale_by_calibration(formats, **calib),
                           *tail)
    return factory, dict(_adam_kwargs(c, lr), max_stiffness=_get(c, "max_stiffness")), ()


def _no_format(path: str) -> None:
    del path


def _grid(c, lr, formats):
    formats = _no_format if formats is None else formats
    peak, grid_lr = _get(c, "learning_rate"), _get(c, "grid_learning_rate")
    _util.check_number("grid_learning_rate", grid_lr, lo=0.0)
    ratio = float(grid_lr) / float(peak) if peak else 0.0
    mask = decay_mask(_get(c, "decay_mask"))
    static = dict(rounding=_get(c, "rounding"), seed=_get(c, "seed"),
                  track_bit_position=_get(c, "track_bit_position"))

    def labels(params):
        fmts = _util.resolve_formats(formats, params)
        leaves, treedef = _util.flatten(params)
        return jax.tree_util.tree_unflatten(
            treedef, ["float32" if f is None else "grid" for f in fmts])

    def factory(learning_rate, b1, b2, eps, weight_decay, grid_weight_decay, momentum, rung_clip):
        grid_rate = ((lambda t: learning_rate(t) * ratio) if callable(learning_rate)
                     else learning_rate * ratio)
        grid = optax.chain(optax.add_decayed_weights(grid_weight_decay, mask), grid_optimizer(
            grid_rate, formats, momentum=momentum, weight_decay=0.0, rung_clip=rung_clip,
            **static))
        adamw = optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay, mask=mask)
        return optax.multi_transform({"grid": grid, "float32": adamw}, labels)
    grid_decay = _get(c, "grid_weight_decay")
    grid_decay = _get(c, "weight_decay") if grid_decay is None else grid_decay
    _util.check_number("grid_weight_decay", grid_decay, lo=0.0)
    return factory, dict(_adam_kwargs(c, lr), grid_weight_decay=grid_decay,
                         momentum=_get(c, "momentum"), rung_clip=_get(c, "rung_clip")), ()


def _sgd(c, lr, formats):
    mask = decay_mask(_get(c, "decay_mask"))

    def factory(learning_rate, momentum, weight_decay):
        return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                           optax.sgd(learning_rate, momentum=momentum))
    return factory, dict(learning_rate=lr, momentum=_get(c, "momentum"),
                         weight_decay=_get(c, "weight_decay")), ()


OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "adamw": _adamw, "manifold_adamw": _manifold, "grid": _grid, "sgd": _sgd}


def _check_fields(config: Any, name: str) -> None:
    """Factory-time checks of the fields every arm shares (one-line ValueErrors)."""
    precondition, units = _get(config, "precondition"), _get(config, "lr_units")
    _util.check_choice("precondition", precondition, PRECONDITIONS)
    _util.check_choice("lr_units", units, LR_UNITS)
    _util.check_choice("decay_mask", _get(config, "decay_mask"), DECAY_MASKS)
    _util.check_number("grid_step_multiplier", _get(config, "grid_step_multiplier"), lo=0.0,
                       lo_open=True)
    if not isinstance(_get(config, "diagnostics"), bool):
        raise ValueError(f"diagnostics must be True or False, got "
                         f"{_get(config, 'diagnostics')!r}")
    ulp_arm = name == "manifold_adamw" and precondition in ("update", "tensor")
    if float(_get(config, "unformatted_scale")) != 1.0 and not (ulp_arm and units == "grid_steps"):
        raise ValueError("unformatted_scale is only used by manifold_adamw with precondition "
                         "'update'/'tensor' and lr_units='grid_steps'; set it to 1.0 (float32 "
                         "leaves get AdamW at learning_rate)")


def _looks_like_params(tree: Any) -> bool:
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves)


def make_optimizer(config: Any, params_or_formats: Any = None, *, snap: bool = True
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """Builds the optimizer named by ``config`` and its learning-rate schedule.

    Config fields (an ``ml_collections.ConfigDict`` or any object with these attributes; missing
    fields take the default in brackets)::

      name               "adamw" | "manifold_adamw" | "grid" | "sgd"                [required]
      learning_rate      peak learning rate, AdamW-sized (see lr_units)              [1e-3]
      schedule           "constant" | "warmup_cosine" | "warmup_linear"             ["constant"]
      warmup_steps       linear warmup steps from 0; None -> warmup_frac * total     [None]
      warmup_frac        warmup as a fraction of total_steps                        [0.0]
      total_steps        schedule length (required unless schedule="constant")      [None]
      b1, b2, eps        Adam moments' decays and epsilon                   [0.9, 0.999, 1e-8]
      weight_decay       AdamW decoupled decay (the grid arm's float32 leaves too);
                         coupled (added to g) for sgd                               [0.0]
      grid_weight_decay  grid: coupled decay of the quantized leaves (added to g
                         before the velocity); None = weight_decay                  [None]
      decay_mask         "ndim>=2" (decay only params with >= 2 dims) | "all"       ["ndim>=2"]
      grad_clip_norm     clip_by_global_norm before the optimizer; 0 = off          [0.0]
      precondition       manifold_adamw: "none" | "gradient" | "update" | "tensor"  ["gradient"]
      lr_units           "update"/"tensor": "parameter" | "grid_steps" (legacy)     ["parameter"]
      grid_step_multiplier  c: per tensor lr_grid_steps = c * lr(t) / median_spacing(w_0)  [1.0]
      mantissa_bits      manifold_adamw "gradient": M for all leaves; 0/None = from formats
      max_stiffness      manifold_adamw "gradient": clamp of the stiffness          [1e6]
      unformatted_scale  legacy, lr_units="grid_steps" only: factor on float32 leaves  [1.0]
      float_learning_rate  peak lr of the float32 leaves (format None), same schedule
                         shape; 0 = learning_rate (see "Float32 leaves" below)      [0.0]
      grid_learning_rate grid: peak SGD-momentum rate of the quantized leaves (the
                         step before rounding is grid_learning_rate * v, in parameter
                         units; it follows the schedule's shape)                    [1.0]
      momentum           grid / sgd momentum (0 = none for sgd)                     [0.9]
      rung_clip          grid: most rungs per step                                  [10]
      rounding           grid (rung rounding) and snap_to_grid: "stochastic" | "nearest"
                                                                                    ["stochastic"]
      seed               PRNG seed of stochastic rounding                           [0]
      weights_on_grid    append snap_to_grid(formats, rounding, seed) (regime (b))  [False]
      diagnostics        wrap in with_grid_diagnostics (flips/stalls in the state)  [False]
      inject_hyperparams wrap in optax.inject_hyperparams (lr readable in state)    [False]
      track_bit_position per-element cumulative bit position in the diagnostics     [True]

    The arms (regime (a): float32 masters, quantized forward; regime (b): ``weights_on_grid=True``,
    the weights stored only on their grid, Adam moments in float32)::

      adamw            name="adamw"                                      optax.adamw(mask=...)
      manifold_gradient  name="manifold_adamw", precondition="gradient"  the seeds' algorithm:
                       chain(scale_by_stiffness, scale_by_adam, decay, lr) = AdamW with eps/S
      manifold_update  name="manifold_adamw", precondition="update"      ULP-consistent:
                       chain(scale_by_adam, scale_by_ulp, scale_by_calibration, decay, lr)
      adamw_rtn        name="adamw", weights_on_grid=True, rounding="nearest"
      adamw_sr         name="adamw", weights_on_grid=True, rounding="stochastic"
      ulp_sr           name="manifold_adamw", precondition="update", weights_on_grid=True,
                       rounding="stochastic"
      tensor_sr        name="manifold_adamw", precondition="tensor", weights_on_grid=True,
                       rounding="stochastic": chain(scale_by_adam, scale_by_tensor_spacing,
                       scale_by_calibration, decay, lr) (AdamW direction x the current tensor's
                       median grid spacing; equal to ulp_sr on E0M7's uniform grid)
      grid             name="grid": multi_transform of grid_optimizer (quantized leaves) and AdamW

    Learning rates (lr_units="parameter"): ``learning_rate`` is AdamW's in every arm. The ULP
    modes ("update", "tensor") take per tensor ``c * lr(t) / median_spacing(w_0)`` grid steps per
    step (`scale_by_calibration`; `calibration_table` reads it), so ``c = 1`` is an AdamW-sized
    median step at init in every format. lr_units="grid_steps" keeps the legacy meaning
    (``learning_rate`` in grid steps, float32 leaves scaled by ``unformatted_scale``).

    Float32 leaves (format None: head, biases, LayerNorm by default; every leaf for format "none")
    get plain AdamW at ``learning_rate`` in every arm, the grid arm included (its quantized leaves
    take ``grid_learning_rate``); only ``name="sgd"`` uses SGD for every leaf. The weight-decay
    mask (`decay_mask`) applies in every arm. ``snap_to_grid`` and the grid optimizer touch
    quantized leaves only. ``float_learning_rate > 0`` decouples the two: the float32 leaves'
    updates are multiplied by ``float_learning_rate / learning_rate`` (`scale_float_leaves`, after
    the optimizer), so they follow AdamW at ``float_learning_rate`` whatever ``learning_rate`` the
    quantized leaves take. A study that tunes an AdamW arm's ``learning_rate`` then tunes only
    its quantized leaves, and every arm's float32 leaves (embedding, head, biases, LayerNorm)
    train identically. Equal to ``learning_rate``, the link is left out (bit-identical to 0).
    With ``inject_hyperparams`` the state's ``learning_rate`` is the quantized leaves' rate.

    The chain is ``chain(clip_by_global_norm, <optimizer>, snap_to_grid)`` with the optional
    links left out, wrapped in `with_grid_diagnostics` when ``diagnostics=True`` (for library
    users; the training loop computes its diagnostics in its own step). ``name="grid"`` carries
    its own diagnostics and implies ``weights_on_grid``.

    Args:
      config: the optimizer config (fields above).
      params_or_formats: the per-leaf formats (pytree of FloatFormat/name/None, callable
        ``path -> format``, `PrecisionRules`, one format) or None; a params pytree (array leaves)
        is accepted and means "no formats" (float32 everywhere).
      snap: with ``weights_on_grid``, ``False`` builds the *intended-update twin*: the same chain
        and the same state structure, with the snap link passing its input through. Applied to the
        same state it returns the update the optimizer wanted before rounding onto the grid, which
        is what the stall ratio and the below-half-step fraction of regime (b) must count (after
        the snap, an update rounded away is a zero update, not a stall). Never train with it.

    Returns:
      ``(tx, schedule)``: the `optax.GradientTransformation` and the learning-rate schedule.

    Raises:
      ValueError: for an unknown name (listing the valid ones) or a bad field.

    Example:
      >>> import ml_collections, jax.numpy as jnp
      >>> c = ml_collections.ConfigDict(dict(name="manifold_adamw", learning_rate=1e-3,
      ...     schedule="warmup_cosine", warmup_frac=0.05, total_steps=100, precondition="update"))
      >>> tx, sched = make_optimizer(c, "E4M3")
      >>> state = tx.init({"w": jnp.ones(3)}); round(float(sched(5)), 6)
      0.001
      >>> sorted(calibration_table(state)["w"])
      ['c', 'format', 'grid_steps_per_lr', 'median_spacing']
    """
    name = _get_name(config)
    builder = OPTIMIZERS.get(name)
    if builder is None:
        raise ValueError(f"unknown optimizer name {name!r}; valid names: {sorted(OPTIMIZERS)}")
    formats = None if _looks_like_params(params_or_formats) else params_or_formats
    schedule = make_schedule(config)
    clip = _get(config, "grad_clip_norm") or 0.0
    _util.check_number("grad_clip_norm", clip, lo=0.0)
    _check_fields(config, name)
    on_grid = bool(_get(config, "weights_on_grid"))
    if on_grid and formats is None:
        raise ValueError("weights_on_grid=True needs formats")
    factory, kwargs, static = builder(config, schedule, formats)

    if _get(config, "inject_hyperparams"):
        tx = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
    else:
        tx = factory(**kwargs)
    links = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    links.append(tx)
    ratio = _float_ratio(config)
    if ratio is not None:
        links.append(scale_float_leaves(ratio, formats))
    if name == "grid":  # its weights are on the grid already (rungs, not a snap link)
        return (links[0] if len(links) == 1 else optax.chain(*links)), schedule
    if on_grid:
        snap_link = snap_to_grid(formats, rounding=_get(config, "rounding"),
                                 seed=_get(config, "seed"))
        links.append(snap_link if snap else _intended_update(snap_link))
    tx = links[0] if len(links) == 1 else optax.chain(*links)
    if _get(config, "diagnostics"):
        tx = with_grid_diagnostics(tx, formats,
                                   track_bit_position=_get(config, "track_bit_position"))
    return tx, schedule


def _float_ratio(config: Any) -> float | None:
    """``float_learning_rate / learning_rate``, or None when the link is not needed."""
    flr, lr = _get(config, "float_learning_rate"), _get(config, "learning_rate")
    _util.check_number("float_learning_rate", flr, lo=0.0)
    if not flr or float(flr) == float(lr):
        return None
    if not lr:
        raise ValueError("float_learning_rate needs learning_rate > 0 (it scales the float32 "
                         "leaves' AdamW step by float_learning_rate / learning_rate)")
    return float(flr) / float(lr)


def scale_float_leaves(ratio: float, formats: Any = None) -> optax.GradientTransformation:
    """Multiplies the updates of the float32 leaves (format None) by ``ratio``; quantized leaves
    pass through.

    Placed after an optimizer whose step is proportional to its learning rate (AdamW with
    decoupled decay, SGD), it gives the float32 leaves the rate ``ratio * learning_rate``
    (`make_optimizer`'s ``float_learning_rate``).

    Args:
      ratio: the factor (float32 leaves).
      formats: the per-leaf formats (see `make_optimizer`); None: every leaf is float32.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_float_leaves(0.5, lambda path: "E4M3" if "kernel" in str(path) else None)
      >>> u, _ = tx.update({"kernel": jnp.ones(2), "bias": jnp.ones(2)}, tx.init(None))
      >>> u["kernel"].tolist(), u["bias"].tolist()
      ([1.0, 1.0], [0.5, 0.5])
    """
    def update_fn(updates, state, params=None):
        del params
        fmts = _util.resolve_formats(formats, updates)  # None: every leaf float32
        leaves, treedef = _util.flatten(updates)
        out = [u if f is not None else u * jnp.asarray(ratio, u.dtype)
               for u, f in zip(leaves, fmts)]
        return jax.tree_util.tree_unflatten(treedef, out), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _intended_update(snap_link: optax.GradientTransformation) -> optax.GradientTransformation:
    """``snap_link``'s state, but the update passes through unsnapped (see ``snap=False``)."""
    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return updates, state
    return optax.GradientTransformationExtraArgs(snap_link.init, update_fn)


def _get_name(config: Any) -> str:
    name = config.get("name", None) if hasattr(config, "get") else getattr(config, "name", None)
    if not isinstance(name, str):
        raise ValueError(f"config.name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return name
