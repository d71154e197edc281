"""Optimizers whose weights live on their format's grid: `grid_optimizer` and `snap_to_grid`.

Grid index (format semantics used by `rung_index` / `index_value`): a code is sign-magnitude,
``S | E..E | M..M``. Its magnitude bits ``mag`` are monotone in the value, so the signed integer
``i = (-1)^S * mag`` enumerates the finite grid in order, +0 and -0 both being ``i = 0``. Formats
without subnormals skip the magnitudes ``1 .. 2^M - 1`` (they decode to 0). ``i`` is clipped to
``+-I_max`` with ``I_max`` the index of ``fmt.max``, so inf/NaN codes are never produced. Example,
E4M3 (e4m3fn): ``0 0111 000`` = 1.0 has ``i = 56``; ``i = 57`` is ``0 0111 001`` = 1.125; ``i = 55``
is ``0 0110 111`` = 0.9375 (the binade edge is crossed by the integer add); ``I_max = 126`` (448).

Per-tensor scale of `grid_optimizer`: ``s = amax_scale(w, fmt, margin=1, pow2=True)`` of the
*current* params, a power of two with one binade of headroom. The headroom is needed: with
``s = max|w| / fmt.max`` the largest weight sits on the top rung and could never grow (the scale is
recomputed from it), so a tensor could never widen its range. A power of two makes ``w / s`` and ``g * s`` are exact, grids at ``s`` and ``2s`` nest, and (tested
exhaustively on every grid value and every move of up to ``rung_clip`` rungs) the returned
``target - params`` makes ``optax.apply_updates`` land exactly on ``target``. With
``pow2_scale=False`` (``s = max|w| / fmt.max``, the forward pass's current scaling) about 1% of
moves that cross zero or more than a factor of two land one float32 ULP off the grid, because
``target - params`` is then not exactly representable in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.formats import FloatFormat, decode, encode
from altgrad_jax.optim import _util
from altgrad_jax.optim.diagnostics import finish_bit_position, stall_ratio
from altgrad_jax.quant import amax_scale, quantize, ulp

ROUNDINGS = ("stochastic", "nearest")


# ------------------------------------------------------------------------------ grid indices
def _index_offset(fmt: FloatFormat) -> int:
    return 0 if fmt.subnormals else (1 << fmt.mantissa_bits) - 1


def max_index(fmt: FloatFormat) -> int:
    """Index of ``fmt.max`` (the number of positive finite grid values)."""
    return fmt.max_code_magnitude - _index_offset(fmt)


def rung_index(y: jax.Array, fmt: FloatFormat) -> jax.Array:
    """int32 monotone grid index of ``round_to_nearest(y)`` (``y`` unscaled, finite; saturating)."""
    nb = fmt.exponent_bits + fmt.mantissa_bits
    code = encode(y, fmt).astype(jnp.int32)
    sign = (code >> nb) & 1
    mag = code & ((1 << nb) - 1)
    off = _index_offset(fmt)
    if off:
        mag = jnp.where(mag > off, mag - off, 0)
    return jnp.where(sign == 1, -mag, mag)


def index_value(i: jax.Array, fmt: FloatFormat) -> jax.Array:
    """float32 grid value (unscaled) of the int32 index ``i`` (clipped to ``+-max_index``)."""
    nb = fmt.exponent_bits + fmt.mantissa_bits
    i = jnp.clip(i, -max_index(fmt), max_index(fmt))
    mag = jnp.abs(i)
    off = _index_offset(fmt)
    if off:
        mag = jnp.where(mag > 0, mag + off, 0)
    code = jnp.where(i < 0, (1 << nb) | mag, mag)
    return decode(code.astype(jnp.uint32), fmt)


def grid_scale(w: jax.Array, fmt: FloatFormat, pow2_scale: bool = True,
               margin: float = 0.0) -> jax.Array:
    """The per-tensor scale the grid links use: ``amax_scale(w, fmt, margin=, pow2=pow2_scale)``."""
    return amax_scale(w.astype(jnp.float32), fmt, margin=margin, pow2=pow2_scale)


def move_rungs(w: jax.Array, k: jax.Array, fmt: FloatFormat, scale: jax.Array) -> jax.Array:
    """Moves each ``w`` by ``k`` rungs along the grid ``scale * fmt``: exact, crosses binades.

    ``w`` is first rounded to its nearest grid value; the result is clipped to ``+-max * scale``.
    Elements with ``k == 0`` are returned unchanged (not snapped).
    """
    w32 = w.astype(jnp.float32)
    i = rung_index(w32 / scale, fmt)
    moved = index_value(i + k, fmt) * scale
    return jnp.where(k == 0, w32, moved)


# --------------------------------------------------------------------------- grid optimizer
class GridOptimizerState(NamedTuple):
    """State of `grid_optimizer` (a pure pytree of arrays: checkpoint it as is).

    Attributes:
      grid_count: int32 step counter (for learning-rate schedules).
      velocity: per-leaf momentum buffer ``v`` (param dtype).
      grid_key: uint32[2] PRNG key for stochastic rung rounding.
      flips, updates, stall_ratio, bit_position, bit_position_mean_abs, grid_steps_mean_abs:
        diagnostics (not used by the algorithm), as in `GridDiagnosticsState`; ``bit_position``
        counts rungs actually moved (exact integers, stored as float32).
      rungs_clipped_frac: diagnostic, fraction of elements whose rung count hit ``rung_clip``.
    """

    grid_count: jax.Array
    velocity: Any
    grid_key: jax.Array
    flips: jax.Array
    updates: jax.Array
    stall_ratio: jax.Array
    grid_steps_mean_abs: jax.Array
    bit_position: Any
    bit_position_mean_abs: jax.Array
    rungs_clipped_frac: jax.Array


def _check_rounding(rounding: str) -> None:
    _util.check_choice("rounding", rounding, ROUNDINGS)


def grid_optimizer(learning_rate: Any, formats: _util.FormatsSpec, *, momentum: Any = 0.9,
                   weight_decay: Any = 0.0, rung_clip: Any = 10, rounding: str = "stochastic",
                   seed: int = 0, track_bit_position: bool = True, pow2_scale: bool = True
                   ) -> optax.GradientTransformationExtraArgs:
    """SGD with momentum whose weights move by whole rungs of their format's grid (no master copy).

    .. math::
       v &\\leftarrow \\mu v + g + \\lambda w \\\\
       r &= \\mathrm{clip}(-\\eta v / \\mathrm{ulp}(w, \\mathrm{fmt}, s),\\ -R,\\ R), \\quad
       k = \\mathrm{round}(r) \\\\
       w' &= s \\cdot \\mathrm{grid}[\\mathrm{index}(w/s) + k] \\ \\ (k \\ne 0), \\qquad w' = w \\ \\ (k = 0)

    with ``s = amax_scale(w, fmt, margin=1, pow2=True)`` of the current params (a power of two with
    one binade of headroom so the largest weight can grow; see the module docstring), ``round`` unbiased stochastic (``floor(r + U[0,1))``) or nearest-even, and the
    index move exact across binade edges, clipped to the finite range. A weight with zero gradient
    and zero velocity never moves; an off-grid weight (e.g. at init) is snapped by its first
    non-zero move only. Note that ``rung_clip`` bounds a step in rungs, i.e. relative to the
    weight's binade: crossing zero through the subnormal range (``2^M`` rungs per binade) takes
    ``2^M / rung_clip`` steps or more, so wide-mantissa formats need a larger ``rung_clip``.
    Leaves whose format is None do plain SGD with momentum
    (``w' = w - eta v``). This link needs ``params`` and must be the LAST link of a chain: it
    returns ``target - params`` so `optax.apply_updates` lands every weight exactly on ``target``.

    Args:
      learning_rate: step size (scalar or schedule).
      formats: per-leaf formats: pytree (FloatFormat / name / None per leaf), callable
        ``path -> format``, `PrecisionRules`, or one format for all leaves.
      momentum: ``mu`` in [0, 1).
      weight_decay: ``lambda`` >= 0, added to the velocity (coupled, as in SGD).
      rung_clip: ``R``, the most rungs one step may move (positive).
      rounding: ``"stochastic"`` (unbiased) or ``"nearest"``.
      seed: seed of the PRNG key kept in the state.
      track_bit_position: keep per-element cumulative rung counts in the state.
      pow2_scale: power-of-two per-tensor scales (exact; default) or ``2 max|w| / fmt.max``.

    Returns:
      An `optax.GradientTransformationExtraArgs`; state `GridOptimizerState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = grid_optimizer(0.1, "E4M3", rounding="nearest")
      >>> p = jnp.array([1.0, -0.5, 0.25]); s = tx.init(p)
      >>> u, s = tx.update(jnp.array([2.0, 0.0, -1.0]), s, p)
      >>> optax.apply_updates(p, u).tolist()
      [0.875, -0.5, 0.34375]

    References:
      Zhao et al., 2022, "LNS-Madam"; Bernstein et al., 2020 (Madam).
    """
    _util.check_number("learning_rate", learning_rate, lo=0.0)
    _util.check_number("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    _util.check_number("weight_decay", weight_decay, lo=0.0)
    _util.check_number("rung_clip", rung_clip, lo=0.0, lo_open=True)
    _check_rounding(rounding)
    if formats is None:
        raise ValueError("formats is required for grid_optimizer (use None leaves for float32 "
                         "parameters, or optax.sgd for no grid at all)")
    _util.check_formats_spec(formats)
    lr_fn = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        _util.resolve_formats(formats, params)
        zeros = lambda dtype: jnp.zeros([], dtype)  # noqa: E731
        if track_bit_position:
            bp = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        else:
            bp = zeros(jnp.float32)
        return GridOptimizerState(
            grid_count=zeros(jnp.int32), velocity=jax.tree.map(jnp.zeros_like, params),
            grid_key=jax.random.PRNGKey(seed).astype(jnp.uint32),
            flips=zeros(jnp.int32),
            updates=zeros(jnp.int32), stall_ratio=zeros(jnp.float32),
            grid_steps_mean_abs=zeros(jnp.float32), bit_position=bp,
            bit_position_mean_abs=zeros(jnp.float32), rungs_clipped_frac=zeros(jnp.float32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("grid_optimizer needs params: tx.update(grads, state, params); it "
                             "must be the last link of a chain")
        fmts = _util.resolve_formats(formats, params)
        g_leaves, treedef = _util.flatten(updates)
        p_leaves, _ = _util.flatten(params)
        v_leaves, _ = _util.flatten(state.velocity)
        b_leaves = _util.flatten(state.bit_position)[0] if track_bit_position else None
        lr = jnp.asarray(lr_fn(state.grid_count), jnp.float32)
        key, sub = jax.random.split(state.grid_key)
        flips = upd = stalls = jnp.zeros([], jnp.int32)
        abs_sum = signed_sum = pos_abs_sum = clip_sum = jnp.zeros([], jnp.float32)
        out_u, out_v, out_b, n = [], [], [], 0
        for i, (g, w, v, fmt) in enumerate(zip(g_leaves, p_leaves, v_leaves, fmts)):
            if _util.is_leaf(g):
                out_u.append(g)
                out_v.append(v)
                if track_bit_position:
                    out_b.append(b_leaves[i])
                continue
            g32, w32 = g.astype(jnp.float32), w.astype(jnp.float32)
            v32 = (jnp.asarray(momentum, jnp.float32) * v.astype(jnp.float32) + g32
                   + jnp.asarray(weight_decay, jnp.float32) * w32)
            step = -lr * v32
            if fmt is None:  # plain SGD with momentum: the update is -lr * v itself
                new = (w + step.astype(w.dtype)).astype(w.dtype).astype(jnp.float32)
                rungs = (new - w32) / _util.dtype_ulp(w)
                clipped = jnp.zeros([], jnp.float32)
                flipped = new != w32
                out_u.append(step.astype(g.dtype))
            else:
                s = grid_scale(w32, fmt, pow2_scale, margin=1.0)
                r = step / ulp(w32, fmt, s)
                rc = jnp.asarray(rung_clip, jnp.float32)
                clipped = jnp.sum((jnp.abs(r) >= rc).astype(jnp.float32))
                r = jnp.clip(r, -rc, rc)
                if rounding == "stochastic":
                    noise = jax.random.uniform(jax.random.fold_in(sub, i), r.shape, jnp.float32)
                    k = jnp.floor(r + noise)
                else:
                    k = jnp.round(r)
                k = jnp.where(jnp.isfinite(k), k, 0.0).astype(jnp.int32)
                i_old = rung_index(w32 / s, fmt)
                i_new = jnp.clip(i_old + k, -max_index(fmt), max_index(fmt))
                target = jnp.where(k == 0, w32, index_value(i_new, fmt) * s)
                target = jnp.where(jnp.isfinite(step), target, step)  # NaN/inf stay visible
                rungs = jnp.where(k == 0, 0, i_new - i_old).astype(jnp.float32)
                flipped = target != w32
                out_u.append((target - w32).astype(g.dtype))
            updated = g != 0
            flips = flips + jnp.sum(flipped, dtype=jnp.int32)
            upd = upd + jnp.sum(updated, dtype=jnp.int32)
            stalls = stalls + jnp.sum(updated & ~flipped, dtype=jnp.int32)
            abs_sum = abs_sum + jnp.sum(jnp.abs(rungs))
            clip_sum = clip_sum + clipped
            n += g.size
            if track_bit_position:
                b = b_leaves[i] + rungs
                out_b.append(b)
                pos_abs_sum = pos_abs_sum + jnp.sum(jnp.abs(b))
            else:
                signed_sum = signed_sum + jnp.sum(rungs)
            out_v.append(v32.astype(v.dtype))
        denom = jnp.float32(max(n, 1))
        bp, bp_abs = finish_bit_position(track_bit_position, treedef, out_b, pos_abs_sum,
                                         state.bit_position, signed_sum, denom)
        new_state = GridOptimizerState(
            grid_count=optax.safe_increment(state.grid_count),
            velocity=jax.tree_util.tree_unflatten(treedef, out_v), grid_key=key,
            flips=flips, updates=upd, stall_ratio=stall_ratio(stalls, upd), grid_steps_mean_abs=abs_sum / denom,
            bit_position=bp, bit_position_mean_abs=bp_abs, rungs_clipped_frac=clip_sum / denom)
        return jax.tree_util.tree_unflatten(treedef, out_u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- snap_to_grid
class SnapToGridState(NamedTuple):
    """State of `snap_to_grid`: the PRNG key for stochastic snapping (uint32[2])."""

    snap_key: jax.Array


def snap_to_grid(formats: _util.FormatsSpec, *, rounding: str = "nearest", seed: int = 0,
                 pow2_scale: bool = True) -> optax.GradientTransformationExtraArgs:
    """Snaps the would-be new params onto their format's per-tensor-scaled grid (weights on grid).

    .. math::
       w' = w + u, \\quad s = \\mathrm{amax\\_scale}(w', \\mathrm{fmt}), \\quad
       u \\leftarrow \\mathrm{quantize}(w', \\mathrm{fmt}, s) - w

    Use it as the LAST link after any optimizer to keep the weights only on the grid (regime
    (b)): ``optax.chain(optax.adamw(1e-3), snap_to_grid(formats))``. It needs ``params`` and returns
    ``target - params`` so `optax.apply_updates` lands on ``target``; with power-of-two scales
    (default) this is exact whenever ``target`` and ``params`` lie within a factor of two of each
    other or a few grid steps apart; a move across many binades can land one float32 ULP away.
    Leaves whose format is None pass through.

    Args:
      formats: per-leaf formats (pytree / callable ``path -> format`` / `PrecisionRules` / one).
      rounding: ``"nearest"`` (ties to even) or ``"stochastic"`` (unbiased).
      seed: seed of the PRNG key kept in the state (stochastic rounding).
      pow2_scale: power-of-two per-tensor scale (default) or ``max|w'| / fmt.max``.

    Returns:
      An `optax.GradientTransformationExtraArgs`; state `SnapToGridState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(0.1), snap_to_grid("E4M3"))
      >>> p = jnp.array([1.0, 0.5]); s = tx.init(p)
      >>> u, s = tx.update(jnp.array([0.3, 0.0]), s, p)
      >>> optax.apply_updates(p, u).tolist()
      [1.0, 0.5]
    """
    _check_rounding(rounding)
    if formats is None:
        raise ValueError("formats is required for snap_to_grid")
    _util.check_formats_spec(formats)

    def init_fn(params):
        _util.resolve_formats(formats, params)
        return SnapToGridState(snap_key=jax.random.PRNGKey(seed).astype(jnp.uint32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("snap_to_grid needs params; it must be the last link of a chain")
        fmts = _util.resolve_formats(formats, params)
        u_leaves, treedef = _util.flatten(updates)
        p_leaves, _ = _util.flatten(params)
        key, sub = jax.random.split(state.snap_key)
        out = []
        for i, (u, w, fmt) in enumerate(zip(u_leaves, p_leaves, fmts)):
            if _util.is_leaf(u) or fmt is None:
                out.append(u)
                continue
            w32 = w.astype(jnp.float32)
            new = (w + u.astype(w.dtype)).astype(w.dtype).astype(jnp.float32)
            s = grid_scale(new, fmt, pow2_scale)
            kw = {"key": jax.random.fold_in(sub, i)} if rounding == "stochastic" else {}
            target = quantize(new, fmt, s, rounding=rounding, **kw)
            out.append((target - w32).astype(u.dtype))
        return jax.tree_util.tree_unflatten(treedef, out), SnapToGridState(snap_key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
