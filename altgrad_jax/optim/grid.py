"""Optimizers whose weights live on their format's grid: `grid_optimizer` and `snap_to_grid`.

Grid index: see `altgrad_jax.quant.grid_index` (`rung_index`, `index_value`, re-exported here).

Storage (both links): every weight of a formatted leaf is stored on its tensor's recipe grid,
``quantize(w, fmt, tensor_scale(w, fmt)) == w`` bit for bit after ``optax.apply_updates``, so the
forward pass (which quantizes with the same `altgrad_jax.quant.tensor_scale`) computes with exactly
the stored weights. Three details make it exact: (1) the targets are passed through
`altgrad_jax.quant.store_on_grid`'s second rounding when the top weight reached ``fmt.max * s``
(the recipe scale doubles); (2) the returned update is compensated (`_util.landing_update`) so that
``w + u`` lands on the target in float32; (3) a target no float32 update can reach (more than ~2^24
times smaller than the weight) becomes 0.

Per-tensor scale of `grid_optimizer`: ``s = tensor_scale(w, fmt)`` of the *current* params (a power
of two with the largest weight strictly below ``fmt.max * s``). A weight that climbs to the top
value ``fmt.max * s`` doubles the scale at the next step, so a tensor can widen its range.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.diagnostics.flips import leaf_flip_counts, stall_ratio
from altgrad_jax.formats import FloatFormat
from altgrad_jax.optim import _util
from altgrad_jax.quant.random import hash_uniform
from altgrad_jax.quant import (index_value, max_index, quantize, rung_index, store_on_grid,
                               tensor_scale, ulp)

ROUNDINGS = ("stochastic", "nearest")


def grid_scale(w: jax.Array, fmt: FloatFormat) -> jax.Array:
    """The per-tensor scale the grid links use: ``tensor_scale(w, fmt)`` (the forward pass's)."""
    return tensor_scale(w.astype(jnp.float32), fmt)


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
      flips, updates, stall_ratio, grid_steps_mean_abs, bit_position, bit_position_mean_abs,
      rungs_clipped_frac: opt-in diagnostics (``diagnostics=True``; None otherwise), not used by
        the algorithm. Over formatted leaves only: ``updates`` = coordinates with a non-zero
        proposed step ``-eta v``, ``flips`` = those whose grid index changed (on the pre-step grid),
        ``stall_ratio`` = `altgrad_jax.diagnostics.stall_ratio`, ``grid_steps_mean_abs`` = mean
        ``|rungs moved|`` per update, ``bit_position`` = cumulative rungs per element (with
        ``track_bit_position``), ``rungs_clipped_frac`` = fraction of elements whose rung count
        hit ``rung_clip``.
    """

    grid_count: jax.Array
    velocity: Any
    grid_key: jax.Array
    flips: jax.Array | None = None
    updates: jax.Array | None = None
    stall_ratio: jax.Array | None = None
    grid_steps_mean_abs: jax.Array | None = None
    bit_position: Any = None
    bit_position_mean_abs: jax.Array | None = None
    rungs_clipped_frac: jax.Array | None = None


def _check_rounding(rounding: str) -> None:
    _util.check_choice("rounding", rounding, ROUNDINGS)


def _rung_counts(r: jax.Array, rounding: str, key: jax.Array) -> jax.Array:
    """int32 rung counts ``k`` from real-valued ``r`` (stochastic: ``floor(r + U)``)."""
    if rounding == "stochastic":
        k = jnp.floor(r + hash_uniform(key, r.shape))
    else:
        k = jnp.round(r)
    return jnp.where(jnp.isfinite(k), k, 0.0).astype(jnp.int32)


def _grid_leaf(w32, step, fmt, rung_clip, rounding, key):
    """(update, rungs moved, clipped count) of one formatted leaf: every weight ends on its grid."""
    s = grid_scale(w32, fmt)
    rc = jnp.asarray(rung_clip, jnp.float32)
    r = step / ulp(w32, fmt, s)
    clipped = jnp.sum((jnp.abs(r) >= rc).astype(jnp.float32))
    k = _rung_counts(jnp.clip(r, -rc, rc), rounding, key)
    i_old = rung_index(w32 / s, fmt)
    i_new = jnp.clip(i_old + k, -max_index(fmt), max_index(fmt))
    target = index_value(i_new, fmt) * s  # k == 0 snaps an off-grid weight too
    target = quantize(target, fmt, tensor_scale(target, fmt))  # a no-op unless the scale grew
    target = jnp.where(jnp.isfinite(step), target, step)  # NaN/inf stay visible
    return _util.landing_update(target, w32), (i_new - i_old).astype(jnp.float32), clipped


def grid_optimizer(learning_rate: Any, formats: _util.FormatsSpec, *, momentum: Any = 0.9,
                   weight_decay: Any = 0.0, rung_clip: Any = 10, rounding: str = "stochastic",
                   seed: int = 0, diagnostics: bool = False, track_bit_position: bool = True
                   ) -> optax.GradientTransformationExtraArgs:
    """SGD with momentum whose weights move by whole rungs of their format's grid (no master copy).

    .. math::
       v &\\leftarrow \\mu v + g + \\lambda w \\\\
       r &= \\mathrm{clip}(-\\eta v / \\mathrm{ulp}(w, \\mathrm{fmt}, s),\\ -R,\\ R), \\quad
       k = \\mathrm{round}(r) \\\\
       w' &= s \\cdot \\mathrm{grid}[\\mathrm{index}(w/s) + k]

    with ``s = tensor_scale(w, fmt)`` of the current params (the forward pass's scale; see the
    module docstring), ``round`` unbiased stochastic (``floor(r + U[0,1))``) or nearest-even, and
    the index move exact across binade edges, clipped to the finite range. The first update snaps
    every weight onto its grid (``k = 0`` included), so from then on every stored weight is a grid
    value: ``quantize(w, fmt, tensor_scale(w, fmt)) == w``. ``rung_clip`` bounds a step in rungs,
    i.e. relative to the weight's binade: crossing zero through the subnormal range (``2^M`` rungs
    per binade) takes ``2^M / rung_clip`` steps or more. Leaves whose format is None do plain SGD
    with momentum (``w' = w - eta v``; the training factory gives them AdamW instead). This link
    needs ``params`` and must be the LAST link of a chain: it returns ``target - params``
    (compensated) so `optax.apply_updates` lands every weight exactly on ``target``.

    Args:
      learning_rate: step size (scalar or schedule).
      formats: per-leaf formats: pytree (FloatFormat / name / None per leaf), callable
        ``path -> format``, `PrecisionRules`, or one format for all leaves.
      momentum: ``mu`` in [0, 1).
      weight_decay: ``lambda`` >= 0, added to the velocity (coupled, as in SGD).
      rung_clip: ``R``, the most rungs one step may move (positive).
      rounding: ``"stochastic"`` (unbiased) or ``"nearest"``.
      seed: seed of the PRNG key kept in the state.
      diagnostics: keep flips / updates / stall ratio / bit position in the state (opt-in; they
        cost extra passes over the params). Off: those state fields are None.
      track_bit_position: with ``diagnostics``, keep per-element cumulative rung counts.

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
    if not isinstance(diagnostics, bool):
        raise ValueError(f"diagnostics must be True or False, got {diagnostics!r}")
    lr_fn = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
    track = diagnostics and track_bit_position

    def init_fn(params):
        _util.resolve_formats(formats, params)
        state = GridOptimizerState(
            grid_count=jnp.zeros([], jnp.int32), velocity=jax.tree.map(jnp.zeros_like, params),
            grid_key=jax.random.PRNGKey(seed).astype(jnp.uint32))
        if not diagnostics:
            return state
        z = jnp.zeros([], jnp.float32)
        bp = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params) if track else z
        return state._replace(flips=z, updates=z, stall_ratio=z, grid_steps_mean_abs=z,
                              bit_position=bp, bit_position_mean_abs=z, rungs_clipped_frac=z)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("grid_optimizer needs params: tx.update(grads, state, params); it "
                             "must be the last link of a chain")
        fmts = _util.resolve_formats(formats, params)
        g_leaves, treedef = _util.flatten(updates)
        p_leaves, _ = _util.flatten(params)
        v_leaves, _ = _util.flatten(state.velocity)
        b_leaves = _util.flatten(state.bit_position)[0] if track else None
        lr = jnp.asarray(lr_fn(state.grid_count), jnp.float32)
        key, sub = jax.random.split(state.grid_key)
        tot = dict(flips=jnp.float32(0), upd=jnp.float32(0), steps=jnp.float32(0),
                   clip=jnp.float32(0), pos_abs=jnp.float32(0), signed=jnp.float32(0))
        out_u, out_v, out_b, n = [], [], [], 0
        for i, (g, w, v, fmt) in enumerate(zip(g_leaves, p_leaves, v_leaves, fmts)):
            if _util.is_leaf(g):
                out_u.append(g)
                out_v.append(v)
                if track:
                    out_b.append(b_leaves[i])
                continue
            g32, w32 = g.astype(jnp.float32), w.astype(jnp.float32)
            v32 = (jnp.asarray(momentum, jnp.float32) * v.astype(jnp.float32) + g32
                   + jnp.asarray(weight_decay, jnp.float32) * w32)
            out_v.append(v32.astype(v.dtype))
            step = -lr * v32
            if fmt is None:  # plain SGD with momentum: the update is -lr * v itself
                out_u.append(step.astype(g.dtype))
                if track:
                    out_b.append(b_leaves[i])
                continue
            u, rungs, clipped = _grid_leaf(w32, step, fmt, rung_clip, rounding,
                                           jax.random.fold_in(sub, i))
            out_u.append(u.astype(g.dtype))
            if diagnostics:
                f, c, st = leaf_flip_counts(w32, w32 + u, step, fmt)
                tot["flips"], tot["upd"], tot["steps"] = (tot["flips"] + f, tot["upd"] + c,
                                                          tot["steps"] + st)
                tot["clip"] = tot["clip"] + clipped
                n += g.size
                if track:
                    out_b.append(b_leaves[i] + rungs)
                    tot["pos_abs"] = tot["pos_abs"] + jnp.sum(jnp.abs(out_b[-1]))
                else:
                    tot["signed"] = tot["signed"] + jnp.sum(rungs)
        new_state = GridOptimizerState(
            grid_count=optax.safe_increment(state.grid_count),
            velocity=jax.tree_util.tree_unflatten(treedef, out_v), grid_key=key)
        if diagnostics:
            denom = jnp.float32(max(n, 1))
            bp, bp_abs = _util.finish_bit_position(track, treedef, out_b, tot["pos_abs"],
                                                   state.bit_position, tot["signed"], denom)
            new_state = new_state._replace(
                flips=tot["flips"], updates=tot["upd"], stall_ratio=stall_ratio(
                    tot["flips"], tot["upd"]),
                grid_steps_mean_abs=jnp.where(tot["upd"] > 0, tot["steps"] / jnp.maximum(
                    tot["upd"], 1.0), 0.0), bit_position=bp, bit_position_mean_abs=bp_abs,
                rungs_clipped_frac=tot["clip"] / denom)
        return jax.tree_util.tree_unflatten(treedef, out_u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- snap_to_grid
class SnapToGridState(NamedTuple):
    """State of `snap_to_grid`: the PRNG key for stochastic snapping (uint32[2])."""

    snap_key: jax.Array


def snap_to_grid(formats: _util.FormatsSpec, *, rounding: str = "nearest", seed: int = 0
                 ) -> optax.GradientTransformationExtraArgs:
    """Snaps the would-be new params onto their format's per-tensor grid (weights on grid).

    .. math::
       w' = w + u, \\quad t = \\mathrm{store\\_on\\_grid}(w', \\mathrm{fmt}), \\quad
       u \\leftarrow t - w \\ \\text{(compensated)}

    with `altgrad_jax.quant.store_on_grid` (rounding at ``tensor_scale(w')``, re-rounded once if
    the recipe scale of the result grew). Use it as the LAST link after any optimizer to keep the
    weights only on the grid (regime (b)): ``optax.chain(optax.adamw(1e-3), snap_to_grid(formats))``.
    It needs ``params`` and returns an update with ``w + u == t`` exactly in float32, so after
    `optax.apply_updates` every stored weight satisfies ``quantize(w, fmt, tensor_scale(w, fmt)) ==
    w`` (the forward pass computes with exactly the stored weights; see the module docstring for
    the one exception, a target no float32 update can reach, which lands on 0). Leaves whose format
    is None pass through.

    Args:
      formats: per-leaf formats (pytree / callable ``path -> format`` / `PrecisionRules` / one).
      rounding: ``"nearest"`` (ties to even) or ``"stochastic"`` (unbiased).
      seed: seed of the PRNG key kept in the state (stochastic rounding).

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
            kw = {"key": jax.random.fold_in(sub, i)} if rounding == "stochastic" else {}
            target = store_on_grid(new, fmt, rounding=rounding, **kw)
            out.append(_util.landing_update(target, w32).astype(u.dtype))
        return jax.tree_util.tree_unflatten(treedef, out), SnapToGridState(snap_key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
