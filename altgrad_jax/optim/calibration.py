"""Learning rates comparable across formats: `scale_by_calibration` and `calibration_table`.

A ULP-aware step of ``eta`` grid steps is a different real step in every format (a grid step of
E7M0 is ~30x one of E3M4 for the same weights). `scale_by_calibration` makes the learning rate
dimensionless: at init it measures each quantized tensor's median grid spacing
``sigma_0 = median_spacing(w_0, fmt)`` (`altgrad_jax.quant.median_spacing`, at the tensor's scale
recipe `altgrad_jax.quant.tensor_scale`) and thereafter multiplies that leaf's update by
``k = c / sigma_0``. Placed between a grid-spacing preconditioner (`scale_by_ulp`,
`scale_by_tensor_spacing`) and ``scale_by_learning_rate(lr)``, a weight moves

.. math::
   \\Delta w = \\eta(t)\\, \\frac{c}{\\sigma_0}\\, \\mathrm{spacing}(w)\\, d, \\qquad
   \\text{i.e. } \\eta_{grid}(t) = c\\, \\eta(t) / \\sigma_0 \\text{ grid steps per step,}

with ``d`` the normalised Adam direction (``|d| ~ 1``): at init the median step is ``c * eta``, an
AdamW-sized step at ``c = 1`` in every format. The factor is fixed at init (kept in the state),
so during training the step still follows the local grid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from altgrad_jax.optim import _util
from altgrad_jax.quant import median_spacing, path_to_str

LR_UNITS = ("parameter", "grid_steps")


@dataclasses.dataclass(frozen=True)
class CalibrationState:
    """State of `scale_by_calibration` (a pytree; ``formats``/``multiplier``/``lr_units`` static).

    Attributes:
      median_spacing: per leaf (params structure), float32 scalar ``sigma_0``, the median grid
        spacing of the tensor at init (0 for float32 leaves).
      factor: per leaf, float32 scalar multiplying the update: ``c / sigma_0`` (lr_units
        "parameter"), 1 (quantized leaves, "grid_steps"), ``unformatted_scale`` (float32 leaves,
        "grid_steps") or 1 (float32 leaves, "parameter").
      formats: static, one format name per leaf in flatten order ("none" for float32 leaves).
      multiplier: static, ``c``.
      lr_units: static, "parameter" or "grid_steps".
    """

    median_spacing: Any
    factor: Any
    formats: tuple[str, ...] = ()
    multiplier: float = 1.0
    lr_units: str = "parameter"


jax.tree_util.register_dataclass(CalibrationState, data_fields=["median_spacing", "factor"],
                                 meta_fields=["formats", "multiplier", "lr_units"])


def scale_by_calibration(formats: _util.FormatsSpec, *, multiplier: float = 1.0,
                         lr_units: str = "parameter", unformatted_scale: float = 1.0
                         ) -> optax.GradientTransformation:
    """Multiplies each quantized leaf's update by ``c / median_spacing(w_0)`` (fixed at init).

    .. math::
       u_i \\leftarrow \\frac{c}{\\sigma_0}\\, u_i, \\qquad
       \\sigma_0 = \\mathrm{median}_j\\ \\mathrm{ulp}(w_{0,j}, \\mathrm{fmt}, s(w_0))

    Float32 leaves (format None) pass unchanged in lr_units "parameter" (they get the plain step
    of the learning rate, i.e. AdamW); in the legacy lr_units "grid_steps" quantized leaves pass
    unchanged (the learning rate is in grid steps) and float32 leaves are multiplied by
    ``unformatted_scale`` (set it to ``adamw_lr / lr``).

    Args:
      formats: per-leaf formats (pytree, callable ``path -> format``, `PrecisionRules`, one format).
      multiplier: ``c`` (> 0): 1 gives an AdamW-sized median step at init.
      lr_units: ``"parameter"`` (default) or ``"grid_steps"`` (legacy: ``c`` unused).
      unformatted_scale: lr_units "grid_steps" only: factor on float32 leaves (> 0).

    Returns:
      An `optax.GradientTransformation`; its state (`CalibrationState`) feeds `calibration_table`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_calibration("E4M3", multiplier=1.0)
      >>> s = tx.init({"w": jnp.array([1.0, 1.5, 3.0])})
      >>> float(s.median_spacing["w"]), float(s.factor["w"])   # scale 2^-7: spacings 1/8, 1/8, 1/4
      (0.125, 8.0)
    """
    _util.check_formats_spec(formats)
    _util.check_choice("lr_units", lr_units, LR_UNITS)
    _util.check_number("grid_step_multiplier", multiplier, lo=0.0, lo_open=True)
    _util.check_number("unformatted_scale", unformatted_scale, lo=0.0, lo_open=True)
    if lr_units == "parameter" and unformatted_scale != 1.0:
        raise ValueError(f"unformatted_scale={unformatted_scale!r} is only used with "
                         "lr_units='grid_steps'; with lr_units='parameter' float32 leaves get "
                         "AdamW at learning_rate: drop it (set 1.0)")

    def init_fn(params):
        fmts = _util.resolve_formats(formats, params)
        leaves, treedef = _util.flatten(params)
        spacing, factor = [], []
        for w, fmt in zip(leaves, fmts):
            if _util.is_leaf(w):
                spacing.append(w)
                factor.append(w)
            elif fmt is None:
                spacing.append(jnp.zeros([], jnp.float32))
                factor.append(jnp.asarray(1.0 if lr_units == "parameter" else unformatted_scale,
                                          jnp.float32))
            else:
                sigma = jnp.asarray(median_spacing(w.astype(jnp.float32), fmt), jnp.float32)
                spacing.append(sigma)
                factor.append(multiplier / sigma if lr_units == "parameter"
                              else jnp.ones([], jnp.float32))
        names = tuple("none" if f is None else f.name for f in fmts)
        return CalibrationState(
            median_spacing=jax.tree_util.tree_unflatten(treedef, spacing),
            factor=jax.tree_util.tree_unflatten(treedef, factor), formats=names,
            multiplier=float(multiplier), lr_units=lr_units)

    def update_fn(updates, state, params=None):
        del params
        u_leaves, treedef = _util.flatten(updates)
        k_leaves, _ = _util.flatten(state.factor)
        out = [u if _util.is_leaf(u) else (u.astype(jnp.float32) * k).astype(u.dtype)
               for u, k in zip(u_leaves, k_leaves)]
        return jax.tree_util.tree_unflatten(treedef, out), state

    return optax.GradientTransformation(init_fn, update_fn)


def calibration_table(opt_state: Any) -> dict[str, dict]:
    """Per-tensor calibration of every `scale_by_calibration` link in ``opt_state`` (host values).

    Returns ``{path: {"median_spacing": sigma_0, "grid_steps_per_lr": g, "c": c, "format": name}}``
    for the quantized leaves: ``g`` is the grid steps per unit of learning rate (``c / sigma_0``
    for lr_units "parameter", 1 for "grid_steps"), so ``g * lr(t)`` is the step in grid steps;
    ``c = g * sigma_0`` is the median step at init relative to AdamW's at the same learning rate.
    ``{}`` when the optimizer has no calibration (adamw, manifold "gradient", grid, sgd).

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_calibration("E4M3", multiplier=2.0)
      >>> calibration_table(tx.init({"w": jnp.array([1.0, 1.5, 3.0])}))["w"]["grid_steps_per_lr"]
      16.0
    """
    found = [x for x in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, CalibrationState))
        if isinstance(x, CalibrationState)]
    table: dict[str, dict] = {}
    for st in found:
        ms, _ = jax.tree_util.tree_flatten_with_path(st.median_spacing, is_leaf=_util.is_leaf)
        ks = _util.flatten(st.factor)[0]
        for (path, sigma), k, name in zip(ms, ks, st.formats):
            if name == "none" or _util.is_leaf(sigma):
                continue
            sigma, k = float(np.asarray(sigma)), float(np.asarray(k))
            table[path_to_str(path)] = {"median_spacing": sigma, "grid_steps_per_lr": k,
                                        "c": k * sigma, "format": name}
    return table
