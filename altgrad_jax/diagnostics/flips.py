"""Grid flips and stalls: did an update move a weight to another point of its format's grid?

A *flip* is a weight whose quantized value changed in one optimizer step; an *update* is a
coordinate whose gradient was non-zero. When updates do not produce flips, the optimizer "stalls" on
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
from altgrad_jax.quant import amax_scale, quantize, ulp


def quantized_view(w: jax.Array, fmt: FloatFormat | None,
                   scale: jax.Array | None = None) -> jax.Array:
    """``quantize(w, fmt, scale)`` with ``scale = amax_scale(w, fmt)`` by default (what the forward
    pass sees), or ``w`` if ``fmt`` is None."""
    w = f32(w)
    if fmt is None:
        return w
    return quantize(w, fmt, amax_scale(w, fmt) if scale is None else scale)


def _changed(a: jax.Array, b: jax.Array) -> jax.Array:
    """Elementwise "a and b differ" where NaN equals NaN (a weight that stays NaN did not flip)."""
    return ~((a == b) | (jnp.isnan(a) & jnp.isnan(b)))


def _stall_ratio(flips: jax.Array, updates: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.float32(1.0) - safe_div(flips, updates, empty=1.0), jnp.float32(0.0))


def flip_stats(old_params: Any, new_params: Any, grads: Any | None, format_fn: Any
               ) -> dict[str, jax.Array]:
    """Per-layer and total grid flips, updates and stall ratio of one optimizer step.

    For each leaf with format ``f`` (``None`` = unquantized, compared in float32):

    .. math::
       \\mathrm{flips} = \\#\\{i : Q_f(w^{new})_i \\ne Q_f(w^{old})_i\\},\\quad
       \\mathrm{updates} = \\#\\{i : g_i \\ne 0\\},\\quad
       \\mathrm{stall} = \\max(0,\\, 1 - \\mathrm{flips} / \\mathrm{updates})

    with ``Q_f(w) = quantize(w, f, s)`` and ONE scale for both sides, ``s = amax_scale(w_old, f)``
    (the grid the weights sat on before the step), and ``stall = 0`` when nothing was updated.
    Holding the scale fixed is deliberate: under current amax scaling every step moves the largest
    weight, so the tensor's scale changes and *every* forward-pass value changes with it; counting
    those as flips would read "no stalls" whatever the update did (measured on EURLEX57K: 99.9998%
    of weights "flipped" each step). A flip here is a weight that crossed a rounding boundary of its
    grid because of the update. Momentum or weight decay can flip a coordinate whose gradient is
    zero, so ``flips > updates`` is possible (hence the clip at 0).

    Args:
      old_params: params before the step.
      new_params: params after the step (same structure).
      grads: the gradients of the step (same structure), or None to count a coordinate as updated
        when its float32 value changed (``new != old``).
      format_fn: ``path -> FloatFormat | None`` (e.g. ``PrecisionRules.lookup``) or a
        `PrecisionRules`; static.

    Returns:
      float32 scalars: ``diag/flips``, ``diag/updates``, ``diag/stall_ratio``, ``diag/flip_rate``
      (flips / number of weights) and per layer ``diag/flips/<path>``, ``diag/updates/<path>``,
      ``diag/stall_ratio/<path>``.

    Example:
      >>> old = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
      >>> new = {"w": jnp.array([1.01, 2.5, 3.0, 4.0])}      # 1.01 stays in its E4M3 cell
      >>> s = flip_stats(old, new, {"w": jnp.ones(4)}, lambda p: "E4M3")
      >>> float(s["diag/flips"]), float(s["diag/stall_ratio"])
      (1.0, 0.75)
    """
    fmt_of = as_format_fn(format_fn)
    old = leaves_with_paths(old_params)
    new = dict(leaves_with_paths(new_params))
    g = dict(leaves_with_paths(grads)) if grads is not None else None
    out: dict[str, jax.Array] = {}
    tot_f, tot_u, tot_n = jnp.float32(0), jnp.float32(0), 0
    for path, w_old in old:
        w_new = new[path]
        fmt = fmt_of(path)
        scale = None if fmt is None else amax_scale(f32(w_old), fmt)
        flips = count(_changed(quantized_view(w_new, fmt, scale), quantized_view(w_old, fmt, scale)))
        if g is None:
            updates = count(_changed(f32(w_new), f32(w_old)))
        else:
            updates = count(f32(g[path]) != 0)
        out[f"diag/flips/{path}"] = flips
        out[f"diag/updates/{path}"] = updates
        out[f"diag/stall_ratio/{path}"] = _stall_ratio(flips, updates)
        tot_f, tot_u, tot_n = tot_f + flips, tot_u + updates, tot_n + int(jnp.size(w_old))
    out["diag/flips"] = tot_f
    out["diag/updates"] = tot_u
    out["diag/stall_ratio"] = _stall_ratio(tot_f, tot_u)
    out["diag/flip_rate"] = tot_f / jnp.float32(max(tot_n, 1))
    return out


def below_half_step_fraction(params: Any, updates: Any, format_fn: Any) -> dict[str, jax.Array]:
    """Fraction of non-zero updates smaller than half a grid step of the weight they apply to.

    .. math::
       \\frac{\\#\\{i : u_i \\ne 0,\\ |u_i| < \\mathrm{ulp}_f(w_i, s)/2\\}}{\\#\\{i : u_i \\ne 0\\}},
       \\quad s = \\mathrm{amax\\_scale}(w, f)

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
      >>> p = {"w": jnp.array([1.0, 1.0, 1.0, -4.0])}   # scale 4/448: steps 0.071 at 1, 0.29 at 4
      >>> u = {"w": jnp.array([0.01, 0.1, 0.0, 0.2])}   # 0.01 < 0.036 is erased; 0.1, 0.2 are not
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
        step = ulp(w, fmt, amax_scale(w, fmt))
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
    """``max(0, 1 - sum(flips) / sum(updates))`` over the window (not since step 0); 0 if empty.

    Example:
      >>> s = init_stall_window(2)
      >>> for f, u in [(0.0, 10.0), (5.0, 10.0), (10.0, 10.0)]:
      ...   s = update_stall_window(s, f, u)
      >>> float(windowed_stall_ratio(s))        # last two steps: 1 - 15/20
      0.25
    """
    return _stall_ratio(ring_sum(state.flips), ring_sum(state.updates))


def stall_window_full(state: StallWindow) -> jax.Array:
    """Whether the window has seen ``W`` steps (bool scalar)."""
    return ring_full(state.flips)


def make_flip_stats_fn(format_fn: Any):
    """A jitted ``(old_params, new_params, grads) -> flip_stats(...)`` with ``format_fn`` bound.

    Eager calls dispatch (and compile) every primitive separately; build this once outside the loop.
    """
    fn = as_format_fn(format_fn)
    return jax.jit(lambda old, new, grads: flip_stats(old, new, grads, fn))


def make_below_half_step_fn(format_fn: Any):
    """A jitted ``(params, updates) -> below_half_step_fraction(...)`` with ``format_fn`` bound."""
    fn = as_format_fn(format_fn)
    return jax.jit(lambda params, updates: below_half_step_fraction(params, updates, fn))
