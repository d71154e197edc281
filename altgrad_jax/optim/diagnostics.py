"""Grid diagnostics kept in optimizer state (flips, stalls, bit position) and `metrics()`.

Everything here is *not used by the algorithm*: it observes what an optimizer step does to the
weights as seen through their quantization grids, on every step. The flip count compares the
grid keys (`altgrad_jax.quant.grid_key`: the rounding without the decode) of the weights before and
after the step, plus one amax reduction per tensor.

Cost: on a GPU these are a few fused element-wise passes. On XLA:CPU they are not cheap next to an
AdamW step, which is a single memory-bound pass: whatever else reads the update or the old params
makes XLA write the update or a copy of the params to a fresh full-size buffer, and the two roundings
per element are real arithmetic on two cores (``bench/optim.py``: the "none" mode, which is
AdamW plus these diagnostics, measured 2.0-2.8x of ``optax.adamw`` on 10M parameters without
donation and 3.4-3.9x with donated buffers). In a training step the model dominates and the
difference is small (``bench/train_step.py``).

Definitions, per step (``w`` = params before, ``w' = apply_updates(w, u)`` = after, ``g`` = the raw
gradient handed to the optimizer, ``Q(x) = quantize(x, fmt, s)`` with ``s = amax_scale(w, fmt)``
the scale of the weights *before* the step, used for both sides):

* ``updates``: number of elements with ``g != 0``.
* ``flips``: number of elements with ``Q(w') != Q(w)`` (for leaves without a format: ``w' != w``).
  The scale is held fixed on purpose: under current amax scaling the largest weight moves every
  step, so the forward pass's scale, and with it every quantized value of the tensor, changes each
  step; counting that would read "everything flipped, nothing stalls" whatever the update did
  (measured on EURLEX57K with E5M2: 99.9998% of weights per step). A flip here is a weight that
  crossed a rounding boundary of its grid because of the update.
* ``stall_ratio``: fraction of updated elements (``g != 0``) whose quantized value did not change,
  i.e. ``1 - flips/updates`` when every flip comes from an updated weight; 0 when nothing was
  updated; never negative.
* ``bit_position``: signed cumulative movement of each weight in grid steps of its target format,
  ``sum_t (w'_t - w_t) / ulp(w_t, fmt, s_t)`` (leaves without a format: ULPs of the param dtype).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.optim import _fast, _util
from altgrad_jax.quant import amax_scale, exp2_int, grid_key, quantize, ulp


class GridDiagnosticsState(NamedTuple):
    """State of `with_grid_diagnostics`: the inner state plus diagnostics (not used by the algorithm).

    Attributes:
      inner_state: the wrapped transformation's state.
      flips: int32, elements whose quantized value changed in the last step.
      updates: int32, elements with a non-zero gradient in the last step.
      stall_ratio: float32, fraction of updated elements that did not flip (0 if none updated).
      grid_steps_mean_abs: float32, mean ``|w' - w| / ulp(w)`` of the last step.
      bit_position: per-leaf float32 arrays (``track_bit_position=True``) or a float32 scalar, the
        mean over all elements of the signed cumulative movement (``False``).
      bit_position_mean_abs: float32, mean ``|bit_position|`` over elements; with
        ``track_bit_position=False`` it is ``|mean bit_position|``, a lower bound.
    """

    inner_state: Any
    flips: jax.Array
    updates: jax.Array
    stall_ratio: jax.Array
    grid_steps_mean_abs: jax.Array
    bit_position: Any
    bit_position_mean_abs: jax.Array


def stall_ratio(stalls: jax.Array, updates: jax.Array) -> jax.Array:
    """``stalls / updates`` as float32, 0 when ``updates == 0``."""
    u = updates.astype(jnp.float32)
    return jnp.where(updates > 0, stalls.astype(jnp.float32) / jnp.maximum(u, 1.0),
                     jnp.float32(0.0))


def _leaf_parts(w: jax.Array, u: jax.Array, fmt, pow2_scale: bool):
    """(w32, n32, flipped_fn, steps_fn) of one leaf; the functions are element-wise on slices."""
    w_new = (w + u.astype(w.dtype)).astype(w.dtype)  # what optax.apply_updates computes
    w32, n32 = w.astype(jnp.float32), w_new.astype(jnp.float32)
    if fmt is None:
        m, emin = int(jnp.finfo(w.dtype).nmant), int(jnp.finfo(w.dtype).minexp)

        def flipped_fn(a, b):
            return b != a

        def steps_fn(a, b):
            e = jnp.maximum(_util.floor_log2(a), emin)  # = _util.dtype_ulp(a in w.dtype)
            return (b - a) / exp2_int(jnp.clip(e - m, -149, 127))
    else:
        s0 = amax_scale(w32, fmt, pow2=pow2_scale)
        if fmt.min_subnormal > 2.0 ** -126:
            def flipped_fn(a, b):  # one scale for both sides: see "flips" in the module docstring
                # == (quantize(a, fmt, s0) != quantize(b, fmt, s0)), without decoding
                return (grid_key(a, fmt, s0) != grid_key(b, fmt, s0)) | (a != a) | (b != b)
        else:
            def flipped_fn(a, b):
                return quantize(a, fmt, s0) != quantize(b, fmt, s0)

        def steps_fn(a, b):
            return (b - a) / ulp(a, fmt, s0)
    return w32, n32, flipped_fn, steps_fn


def leaf_moves(g: jax.Array, w: jax.Array, u: jax.Array, fmt, *, pow2_scale: bool = False
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per-leaf (flips, updates, stalls, grid_steps) for one step; counts are int32 scalars.

    Reference formulation (materialises the per-element arrays); `with_grid_diagnostics` computes
    the same values with fused reductions.
    """
    w32, n32, flipped_fn, steps_fn = _leaf_parts(w, u, fmt, pow2_scale)
    flipped = flipped_fn(w32, n32)
    updated = g != 0
    flips = jnp.sum(flipped, dtype=jnp.int32)
    upd = jnp.sum(updated, dtype=jnp.int32)
    stalls = jnp.sum(updated & ~flipped, dtype=jnp.int32)
    return flips, upd, stalls, steps_fn(w32, n32)


def _leaf_counts(g, w32, n32, flipped_fn):
    """(flips, updates, stalls) in one fused pass (see `altgrad_jax.optim._fast`)."""

    def masks(gi, a, b):
        flipped = flipped_fn(a, b)
        updated = gi != 0
        return flipped, updated, updated & ~flipped

    return _fast.fold_counts(masks, g, w32, n32)


def finish_bit_position(track: bool, treedef: Any, new_leaves: list, pos_abs_sum: jax.Array,
                        prev: Any, signed_sum: jax.Array, denom: jax.Array
                        ) -> tuple[Any, jax.Array]:
    """``(bit_position, bit_position_mean_abs)`` of the new state, shared by the diagnostics and
    the grid optimizer: the per-leaf arrays and the mean ``|b|`` over elements (``track``), or the
    scalar running mean ``prev + signed_sum / denom`` and its absolute value (a lower bound)."""
    if track:
        return jax.tree_util.tree_unflatten(treedef, new_leaves), pos_abs_sum / denom
    bit_position = prev + signed_sum / denom
    return bit_position, jnp.abs(bit_position)


def with_grid_diagnostics(inner: optax.GradientTransformation, formats: _util.FormatsSpec = None,
                          *, track_bit_position: bool = True, pow2_scale: bool = False
                          ) -> optax.GradientTransformationExtraArgs:
    """Wraps any optimizer so that its state records what each step does on the weights' grids.

    .. math::
       Q(x) = \\mathrm{quantize}(x, \\mathrm{fmt}, \\mathrm{amax\\_scale}(x)), \\quad
       \\mathrm{flips} = \\#\\{i : Q(w'_i) \\ne Q(w_i)\\}, \\quad
       \\mathrm{bit\\_position}_i \\mathrel{+}= (w'_i - w_i)/\\mathrm{ulp}(w_i)

    with ``w' = w + u`` the params after ``optax.apply_updates``. The updates are passed through
    unchanged (bit for bit). See the module docstring for every definition. Read the values with
    `metrics` or ``optax.tree.get(state, "flips")``.

    Args:
      inner: the optimizer to observe (any `optax.GradientTransformation`).
      formats: per-leaf target formats (pytree / callable / `PrecisionRules` / one format / None).
      track_bit_position: keep the per-element cumulative bit position (one float32 per
        parameter); False keeps scalars only.
      pow2_scale: quantize with power-of-two per-tensor scales (match the forward pass).

    Returns:
      A `GradientTransformationExtraArgs` whose ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = with_grid_diagnostics(optax.sgd(0.5), "E4M3")
      >>> p = jnp.array([1.0, 2.0]); s = tx.init(p)
      >>> u, s = tx.update(jnp.array([1.0, 0.0]), s, p)
      >>> int(s.flips), int(s.updates)
      (1, 1)
    """
    _util.check_formats_spec(formats)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _util.resolve_formats(formats, params)
        if track_bit_position:
            bit_position = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        else:
            bit_position = jnp.zeros([], jnp.float32)
        return GridDiagnosticsState(
            inner_state=inner.init(params), flips=jnp.zeros([], jnp.int32),
            updates=jnp.zeros([], jnp.int32), stall_ratio=jnp.zeros([], jnp.float32),
            grid_steps_mean_abs=jnp.zeros([], jnp.float32), bit_position=bit_position,
            bit_position_mean_abs=jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("with_grid_diagnostics needs params: tx.update(grads, state, params)")
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        fmts = _util.resolve_formats(formats, params)
        g_leaves, _ = _util.flatten(updates)
        p_leaves, treedef = _util.flatten(params)
        u_leaves, _ = _util.flatten(new_updates)
        b_leaves = _util.flatten(state.bit_position)[0] if track_bit_position else None
        flips = upd = stalls = jnp.zeros([], jnp.int32)
        abs_sum = signed_sum = pos_abs_sum = jnp.zeros([], jnp.float32)
        new_b, n = [], 0
        for i, (g, w, u, fmt) in enumerate(zip(g_leaves, p_leaves, u_leaves, fmts)):
            if _util.is_leaf(w):
                if track_bit_position:
                    new_b.append(b_leaves[i])
                continue
            w32, n32, flipped_fn, steps_fn = _leaf_parts(w, u, fmt, pow2_scale)
            f, c, st = _leaf_counts(g, w32, n32, flipped_fn)
            flips, upd, stalls = flips + f, upd + c, stalls + st
            abs_sum = abs_sum + _fast.fold_sum(lambda a, b: jnp.abs(steps_fn(a, b)), w32, n32)
            n += w.size
            if track_bit_position:
                b = b_leaves[i] + steps_fn(w32, n32)
                new_b.append(b)
                pos_abs_sum = pos_abs_sum + jnp.sum(jnp.abs(b))
            else:
                signed_sum = signed_sum + _fast.fold_sum(steps_fn, w32, n32)
        denom = jnp.float32(max(n, 1))
        bit_position, pos_mean_abs = finish_bit_position(
            track_bit_position, treedef, new_b, pos_abs_sum, state.bit_position, signed_sum, denom)
        new_state = GridDiagnosticsState(
            inner_state=inner_state, flips=flips, updates=upd,
            stall_ratio=stall_ratio(stalls, upd), grid_steps_mean_abs=abs_sum / denom,
            bit_position=bit_position, bit_position_mean_abs=pos_mean_abs)
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------------------------------- metrics
_PREFIX = "optim/"


def _scalar_fields(state: Any, names: tuple[str, ...]) -> dict[str, jax.Array]:
    out = {}
    for name in names:
        value = getattr(state, name, None)
        if value is not None and hasattr(value, "shape") and jnp.ndim(value) == 0:
            out[name] = value
    return out


def _bit_position_mean(state: Any) -> jax.Array | None:
    bp = getattr(state, "bit_position", None)
    if bp is None:
        return None
    leaves = jax.tree.leaves(bp)
    n = sum(int(x.size) for x in leaves)
    if n == 0:
        return None
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0 and not isinstance(bp, (dict, list, tuple)):
        return jnp.asarray(leaves[0], jnp.float32)
    return sum(jnp.sum(x) for x in leaves) / jnp.float32(n)


def metrics(opt_state: Any) -> dict[str, jax.Array]:
    """Flat dict of the optimizer's diagnostic scalars with ``optim/`` keys (jit-safe, no host sync).

    Keys present depend on the links in the chain:

    * grid diagnostics (`with_grid_diagnostics`, `grid_optimizer`): ``optim/flips``,
      ``optim/updates``, ``optim/stall_ratio``, ``optim/grid_steps_mean_abs``,
      ``optim/bit_position_mean``, ``optim/bit_position_mean_abs``; the grid optimizer adds
      ``optim/rungs_clipped_frac``.
    * ``precondition="gradient"``: ``optim/stiffness_mean``, ``optim/stiffness_clamped_frac``.
    * ``precondition="update"``: ``optim/ulp_mean``.
    * `optax.inject_hyperparams`: ``optim/learning_rate`` and ``optim/hp/<name>`` for the other
      numeric hyperparameters.

    If a state holds several links of one kind (e.g. under ``optax.multi_transform``), the second
    and later get a suffix ``_1``, ``_2``, ...

    Example:
      >>> import jax.numpy as jnp
      >>> from altgrad_jax.optim import manifold_adamw
      >>> tx = manifold_adamw(1e-3, mantissa_bits=3)
      >>> sorted(metrics(tx.init(jnp.ones(3))))[:3]
      ['optim/bit_position_mean', 'optim/bit_position_mean_abs', 'optim/flips']
    """
    from altgrad_jax.optim.grid import GridOptimizerState  # local: grid imports this module
    from altgrad_jax.optim.stiffness import ScaleByStiffnessState
    from altgrad_jax.optim.ulp_scaling import ScaleByUlpState

    kinds = (GridDiagnosticsState, GridOptimizerState, ScaleByStiffnessState, ScaleByUlpState,
             optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    found = [x for x in jax.tree_util.tree_leaves(opt_state,
                                                   is_leaf=lambda x: isinstance(x, kinds))
             if isinstance(x, kinds)]
    # Nested states (the inner state of a wrapper) are found through their own entries.
    found = _expand(found, kinds)
    out: dict[str, jax.Array] = {}
    counts: dict[type, int] = {}

    def put(kind, values):
        i = counts.get(kind, 0)
        counts[kind] = i + 1
        suffix = f"_{i}" if i else ""
        for k, v in values.items():
            out[f"{_PREFIX}{k}{suffix}"] = v

    for st in found:
        if isinstance(st, (GridDiagnosticsState, GridOptimizerState)):
            vals = _scalar_fields(st, ("flips", "updates", "stall_ratio", "grid_steps_mean_abs",
                                       "bit_position_mean_abs", "rungs_clipped_frac"))
            mean = _bit_position_mean(st)
            if mean is not None:
                vals["bit_position_mean"] = mean
            put(GridDiagnosticsState, vals)
        elif isinstance(st, ScaleByStiffnessState):
            put(ScaleByStiffnessState, _scalar_fields(st, ScaleByStiffnessState._fields))
        elif isinstance(st, ScaleByUlpState):
            put(ScaleByUlpState, _scalar_fields(st, ScaleByUlpState._fields))
        else:
            vals = {}
            for k, v in st.hyperparams.items():
                if hasattr(v, "shape") and jnp.ndim(v) == 0:
                    vals[k if k == "learning_rate" else f"hp/{k}"] = v
            put(optax.InjectHyperparamsState, vals)
    return out


def _expand(states: list[Any], kinds: tuple[type, ...]) -> list[Any]:
    out = []
    for st in states:
        out.append(st)
        inner = getattr(st, "inner_state", None)
        if inner is not None:
            nested = [x for x in jax.tree_util.tree_leaves(inner, is_leaf=lambda x: isinstance(
                x, kinds)) if isinstance(x, kinds)]
            out.extend(_expand(nested, kinds))
    return out
