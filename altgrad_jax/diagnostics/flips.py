"""Grid flips and stalls: did an update move a weight to another point of its format's grid?

A *flip* is a quantized weight whose value on its (pre-step) grid changed in one optimizer step;
an *update* is a quantized coordinate whose update (``new - old``) was non-zero. Float32 leaves are
not counted. When updates do not produce flips, the optimizer "stalls" on
the grid. With float32 master weights a stall does not stop learning (the master keeps accumulating
and will eventually cross a rounding boundary); it does stop learning for optimizers that keep the
weights only on the grid (the grid optimizer, or a final snap-to-grid link). Read the numbers with
that in mind.

All functions here are pure and jit-safe (bind ``format_fn`` statically, e.g. with
`functools.partial`) and return flat dicts of float32 scalars, except the `StallWindow` helpers,
which return a pytree state / arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from altgrad_jax.diagnostics._tree import as_format_fn, count, f32, leaves_with_paths, safe_div
from altgrad_jax.diagnostics.ring import RingBuffer, init_ring_buffer, ring_full, ring_push, ring_sum
from altgrad_jax.formats import FloatFormat
from altgrad_jax.quant import quantize, rung_index, tensor_scale, ulp
from altgrad_jax.quant.quantize import divide_by_scale


def quantized_view(w: jax.Array, fmt: FloatFormat | None,
                   scale: jax.Array | None = None) -> jax.Array:
    """``quantize(w, fmt, scale)`` with ``scale = tensor_scale(w, fmt)`` by default (what the
    forward pass sees), or ``w`` if ``fmt`` is None."""
    w = f32(w)
    if fmt is None:
        return w
    return quantize(w, fmt, tensor_scale(w, fmt) if scale is None else scale)


def stall_ratio(flips: jax.Array, updates: jax.Array) -> jax.Array:
    """THE stall ratio: ``1 - flips / updates``, 0 when ``updates == 0``.

    ``updates`` counts the quantized coordinates whose update is non-zero and ``flips`` those of
    them whose quantized value (on the pre-step grid) changed, so ``flips <= updates`` and the
    ratio is the fraction of non-zero updates that did not move the weight on its grid. Used by
    `flip_stats`, the sliding window, the optimizers' opt-in counts, the fallback and the report.

    Example:
      >>> float(stall_ratio(jnp.float32(3), jnp.float32(4))), float(stall_ratio(0, 0))
      (0.25, 0.0)
    """
    f, u = f32(flips), f32(updates)
    return jnp.where(u > 0, jnp.float32(1.0) - f / jnp.where(u > 0, u, 1.0), jnp.float32(0.0))


def leaf_flip_counts(w_old: jax.Array, w_new: jax.Array, update: jax.Array, fmt: FloatFormat
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(flips, updates, grid_steps_abs_sum)`` of one quantized leaf, as float32 scalars.

    With ``s = tensor_scale(w_old, fmt)`` (the pre-step grid, used on both sides; of the finite
    weights, so that one NaN does not blind the count) and
    ``i(x) = rung_index(x / s, fmt)`` the integer grid position of ``x``'s quantized value:
    ``updates = #{u != 0}``, ``flips = #{u != 0 and i(w_new) != i(w_old)}`` (a NaN that appears or
    disappears also flips), ``grid_steps_abs_sum = sum_{u != 0} |i(w_new) - i(w_old)|``.
    """
    a, b = f32(w_old), f32(w_new)
    s = tensor_scale(jnp.where(jnp.isfinite(a), a, 0.0), fmt)  # of the finite weights
    i_old = rung_index(divide_by_scale(jnp.where(jnp.isnan(a), 0.0, a), s), fmt)
    i_new = rung_index(divide_by_scale(jnp.where(jnp.isnan(b), 0.0, b), s), fmt)
    nz = f32(update) != 0
    moved = (i_new != i_old) | (jnp.isnan(a) != jnp.isnan(b))
    steps = jnp.where(nz, jnp.abs(i_new - i_old), 0).astype(jnp.float32)
    return count(nz & moved), count(nz), jnp.sum(steps)


def flip_stats(old_params: Any, new_params: Any, updates: Any, format_fn: Any
               ) -> dict[str, jax.Array]:
    """Per-layer and total grid flips, updates and stall ratio of one optimizer step.

    For each quantized leaf (format ``f``; float32 leaves are excluded everywhere), with ``u`` the
    optimizer's update of the step (``new - old`` as applied) and ``Q`` the quantization on the
    *pre-step* grid (``s = tensor_scale(w_old, f)`` on both sides):

    .. math::
       \\mathrm{updates} = \\#\\{i : u_i \\ne 0\\},\\quad
       \\mathrm{flips} = \\#\\{i : u_i \\ne 0,\\ Q(w^{new})_i \\ne Q(w^{old})_i\\},\\quad
       \\mathrm{stall} = 1 - \\mathrm{flips} / \\mathrm{updates}

    (`stall_ratio`; 0 when nothing was updated). Holding the scale fixed is deliberate: under
    current scaling the largest weight moves every step and with it every quantized value of the
    tensor; counting that would read "no stalls" whatever the update did. Coordinates whose update
    is zero (e.g. embedding rows outside the batch under plain SGD) are in neither count.

    Args:
      old_params: params before the step.
      new_params: params after the step (same structure).
      updates: the updates applied by the step (same structure; ``new = old + updates``).
      format_fn: ``path -> FloatFormat | None`` (e.g. ``PrecisionRules.lookup``) or a
        `PrecisionRules`; static.

    Returns:
      float32 scalars: ``diag/flips``, ``diag/updates``, ``diag/stall_ratio``,
      ``diag/grid_steps_mean_abs`` (mean ``|change of grid index|`` per non-zero update),
      ``diag/flip_rate`` (flips / quantized weights) and per quantized layer
      ``diag/flips/<path>``, ``diag/updates/<path>``, ``diag/stall_ratio/<path>``.

    Example:
      >>> old = {"w": jnp.array([1.0, 2.0, 3.0, 4.0]), "b": jnp.ones(2)}
      >>> new = {"w": jnp.array([1.01, 2.5, 3.0, 4.0]), "b": jnp.zeros(2)}  # 1.01: same cell
      >>> upd = jax.tree.map(lambda n, o: n - o, new, old)
      >>> fmt = lambda p: "E4M3" if p == "w" else None
      >>> s = flip_stats(old, new, upd, fmt)
      >>> float(s["diag/flips"]), float(s["diag/updates"]), float(s["diag/stall_ratio"])
      (1.0, 2.0, 0.5)
    """
    fmt_of = as_format_fn(format_fn)
    new = dict(leaves_with_paths(new_params))
    upd = dict(leaves_with_paths(updates))
    out: dict[str, jax.Array] = {}
    tot_f = tot_u = tot_steps = jnp.float32(0)
    tot_n = 0
    for path, w_old in leaves_with_paths(old_params):
        fmt = fmt_of(path)
        if fmt is None:
            continue
        flips, n_upd, steps = leaf_flip_counts(w_old, new[path], upd[path], fmt)
        out[f"diag/flips/{path}"] = flips
        out[f"diag/updates/{path}"] = n_upd
        out[f"diag/stall_ratio/{path}"] = stall_ratio(flips, n_upd)
        tot_f, tot_u, tot_steps = tot_f + flips, tot_u + n_upd, tot_steps + steps
        tot_n += int(jnp.size(w_old))
    out["diag/flips"] = tot_f
    out["diag/updates"] = tot_u
    out["diag/stall_ratio"] = stall_ratio(tot_f, tot_u)
    out["diag/grid_steps_mean_abs"] = safe_div(tot_steps, tot_u)
    out["diag/flip_rate"] = tot_f / jnp.float32(max(tot_n, 1))
    return out


def below_half_step_fraction(params: Any, updates: Any, format_fn: Any) -> dict[str, jax.Array]:
    """Fraction of non-zero updates smaller than half a grid step of the weight they apply to.

    .. math::
       \\frac{\\#\\{i : u_i \\ne 0,\\ |u_i| < \\mathrm{ulp}_f(w_i, s)/2\\}}{\\#\\{i : u_i \\ne 0\\}},
       \\quad s = \\mathrm{tensor\\_scale}(w, f)

    If the weights lived on the grid, these updates would be rounded away by round-to-nearest (a
    stall; ties at exactly half a step go to even, so they are not counted). ``ulp`` is the spacing of
    the binade that holds ``w``; a downward step across a power of two meets the finer spacing below,
    so the fraction is a close, slightly conservative estimate. Unquantized leaves are skipped.

    Args:
      params: the weights the updates apply to (before the step).
      updates: the optimizer's updates (``new_params - params``), same structure.
      format_fn: ``path -> FloatFormat | None`` or a `PrecisionRules`; static.

    Returns:
      float32 scalars ``diag/below_half_step`` (over all quantized leaves) and
      ``diag/below_half_step/<path>`` per quantized leaf; 0 where no update was non-zero.

    Example:
      >>> p = {"w": jnp.array([1.0, 1.0, 1.0, -4.0])}   # scale 2^-6: steps 1/8 at 1, 1/2 at 4
      >>> u = {"w": jnp.array([0.01, 0.1, 0.0, 0.3])}   # 0.01 < 1/16 is erased; 0.1, 0.3 are not
      >>> s = below_half_step_fraction(p, u, lambda _: "E4M3")
      >>> round(float(s["diag/below_half_step"]), 4)
      0.3333
    """
    fmt_of = as_format_fn(format_fn)
    upd = dict(leaves_with_paths(updates))
    out: dict[str, jax.Array] = {}
    tot_small, tot_nz = jnp.float32(0), jnp.float32(0)
    for path, w in leaves_with_paths(params):
        fmt = fmt_of(path)
        if fmt is None:
            continue
        w, u = f32(w), f32(upd[path])
        step = ulp(w, fmt, tensor_scale(w, fmt))
        nz = u != 0
        small = count(nz & (jnp.abs(u) < step * jnp.float32(0.5)))
        n_nz = count(nz)
        out[f"diag/below_half_step/{path}"] = safe_div(small, n_nz)
        tot_small, tot_nz = tot_small + small, tot_nz + n_nz
    out["diag/below_half_step"] = safe_div(tot_small, tot_nz)
    return out


class StallWindow(NamedTuple):
    """Sliding-window stall tracker: flips and updates of the last ``W`` steps (a pytree).

    ``flips``/``updates`` are `RingBuffer` s whose entries are scalars (totals) or arrays of one
    value per layer (``shape`` in `init_stall_window`).
    """

    flips: RingBuffer
    updates: RingBuffer


def init_stall_window(window: int, shape: tuple[int, ...] = ()) -> StallWindow:
    """An empty window of ``window`` steps; ``shape`` for per-layer vectors (default: scalars)."""
    return StallWindow(flips=init_ring_buffer(window, shape), updates=init_ring_buffer(window, shape))


def update_stall_window(state: StallWindow, flips: jax.Array, updates: jax.Array) -> StallWindow:
    """Pushes one step's flip and update counts (e.g. ``diag/flips``, ``diag/updates``)."""
    return StallWindow(flips=ring_push(state.flips, flips), updates=ring_push(state.updates, updates))


def windowed_stall_ratio(state: StallWindow) -> jax.Array:
    """`stall_ratio` of ``sum(flips)`` and ``sum(updates)`` over the window (not since step 0).

    When the loop samples every ``diag.every`` steps, the window holds the last ``W`` *samples*
    and this is the ratio estimator ``sum(flips) / sum(updates)`` over them (a ratio of sums,
    which weights each sampled step by its number of updates); 0 if empty.

    Example:
      >>> s = init_stall_window(2)
      >>> for f, u in [(0.0, 10.0), (5.0, 10.0), (10.0, 10.0)]:
      ...   s = update_stall_window(s, f, u)
      >>> float(windowed_stall_ratio(s))        # last two steps: 1 - 15/20
      0.25
    """
    return stall_ratio(ring_sum(state.flips), ring_sum(state.updates))


def stall_window_full(state: StallWindow) -> jax.Array:
    """Whether the window has seen ``W`` steps (bool scalar)."""
    return ring_full(state.flips)


def make_flip_stats_fn(format_fn: Any):
    """A jitted ``(old_params, new_params, updates) -> flip_stats(...)`` with ``format_fn`` bound.

    Eager calls dispatch (and compile) every primitive separately; build this once outside the loop.
    """
    fn = as_format_fn(format_fn)
    return jax.jit(lambda old, new, updates: flip_stats(old, new, updates, fn))


def make_below_half_step_fn(format_fn: Any):
    """A jitted ``(params, updates) -> below_half_step_fraction(...)`` with ``format_fn`` bound."""
    fn = as_format_fn(format_fn)
    return jax.jit(lambda params, updates: below_half_step_fraction(params, updates, fn))
