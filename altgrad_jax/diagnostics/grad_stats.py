"""Gradient statistics: norms, per-layer signal-to-noise, dead fraction, and a windowed tracker.

Pure and jit-safe; cheap enough to run inside the train step (a few reductions per leaf).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from altgrad_jax.diagnostics._tree import count, f32, leaves_with_paths, safe_div
from altgrad_jax.diagnostics.ring import RingBuffer, init_ring_buffer, ring_mean, ring_push


def gradient_stats(grads: Any, dead_threshold: float = 1e-8) -> dict[str, jax.Array]:
    """Global and per-layer gradient norms, signal-to-noise and dead fraction.

    Per layer ``g`` (``n`` elements):

    .. math::
       \\|g\\|_2,\\quad \\|g\\|_\\infty = \\max_i |g_i|,\\quad
       \\mathrm{snr} = \\frac{|\\bar g|}{\\sigma(g)},\\quad
       \\mathrm{dead} = \\frac{\\#\\{i : |g_i| < \\tau\\}}{n}

    where ``\\bar g`` and ``\\sigma(g)`` (population std, ``ddof=0``) are taken over the elements of
    the layer at this step: the SNR says whether the layer's gradient has a common sign/offset
    (``>> 1``) or is dominated by spread around zero (``<< 1``). It is not an estimate over
    mini-batches. ``snr = 0`` when ``std == 0`` (a constant or single-element gradient).
    Non-finite gradients propagate into the norms (NaN/inf) so divergence is visible.

    Args:
      grads: a gradient pytree.
      dead_threshold: ``tau``; an element with ``|g| < tau`` counts as dead.

    Returns:
      float32 scalars ``grad/global_norm``, ``grad/global_max``, ``grad/dead_frac`` (over all
      elements), ``grad/nonfinite_frac``, and per layer ``grad/norm/<path>``, ``grad/max/<path>``,
      ``grad/snr/<path>``, ``grad/dead_frac/<path>``.

    Example:
      >>> s = gradient_stats({"w": jnp.array([3.0, 4.0, 0.0, 0.0])})
      >>> float(s["grad/global_norm"]), float(s["grad/dead_frac"])
      (5.0, 0.5)
    """
    if not dead_threshold >= 0:
        raise ValueError(f"dead_threshold must be >= 0, got {dead_threshold!r}")
    out: dict[str, jax.Array] = {}
    sq, gmax, dead, nonfinite, n_tot = jnp.float32(0), jnp.float32(0), jnp.float32(0), \
        jnp.float32(0), 0
    for path, g in leaves_with_paths(grads):
        g = f32(g)
        n = int(g.size)
        if n == 0:
            continue
        a = jnp.abs(g)
        leaf_sq = jnp.sum(g * g)
        leaf_max = jnp.max(a)
        leaf_dead = count(a < jnp.float32(dead_threshold))
        mean = jnp.mean(g)
        std = jnp.std(g)
        out[f"grad/norm/{path}"] = jnp.sqrt(leaf_sq)
        out[f"grad/max/{path}"] = leaf_max
        out[f"grad/snr/{path}"] = safe_div(jnp.abs(mean), std)
        out[f"grad/dead_frac/{path}"] = leaf_dead / jnp.float32(n)
        sq, gmax, dead = sq + leaf_sq, jnp.maximum(gmax, leaf_max), dead + leaf_dead
        nonfinite = nonfinite + count(~jnp.isfinite(g))
        n_tot += n
    out["grad/global_norm"] = jnp.sqrt(sq)
    out["grad/global_max"] = gmax
    out["grad/dead_frac"] = dead / jnp.float32(max(n_tot, 1))
    out["grad/nonfinite_frac"] = nonfinite / jnp.float32(max(n_tot, 1))
    return out


DeadWindow = RingBuffer
"""Windowed dead-fraction tracker: a `RingBuffer` of the last ``W`` dead fractions."""


def init_dead_window(window: int, shape: tuple[int, ...] = ()) -> RingBuffer:
    """An empty window of ``window`` steps (``shape`` for one value per layer)."""
    return init_ring_buffer(window, shape)


def update_dead_window(state: RingBuffer, dead_frac: jax.Array) -> RingBuffer:
    """Pushes one step's dead fraction (e.g. ``grad/dead_frac``)."""
    return ring_push(state, dead_frac)


def windowed_dead_fraction(state: RingBuffer) -> jax.Array:
    """Mean dead fraction over the steps in the window (0 when empty).

    Example:
      >>> w = init_dead_window(2)
      >>> for d in (1.0, 0.2, 0.4):
      ...   w = update_dead_window(w, d)
      >>> round(float(windowed_dead_fraction(w)), 6)
      0.3
    """
    return ring_mean(state)


