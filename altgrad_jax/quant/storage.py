"""Weights stored on their grid: `store_on_grid` (a projection) and `is_on_grid` (its test).

A tensor ``w`` is *stored on the grid* of ``fmt`` when the forward pass's fake quantization leaves
it unchanged, ``quantize(w, fmt, tensor_scale(w, fmt)) == w`` bit for bit. Then the model computes
with exactly the weights the optimizer stores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant.quantize import quantize
from altgrad_jax.quant.scaling import tensor_scale


def store_on_grid(x: jax.Array, fmt: FloatFormat | str, *, rounding: str = "nearest",
                  key: jax.Array | None = None) -> jax.Array:
    """Rounds ``x`` onto its recipe grid so that the result is a fixed point of the forward pass.

    .. math::
       t = Q(x, s(x)), \\qquad \\mathrm{out} = Q_{nearest}(t, s(t))

    with ``Q = quantize`` and ``s = tensor_scale``. One rounding is not always enough: when the
    largest magnitude rounds *up* to ``fmt.max * s`` the recipe scale of the result doubles (see
    `tensor_scale`), and the values are re-rounded once onto the coarser grid (round to nearest; a
    no-op whenever the scale did not grow, because a grid at ``s / 2^j`` contains every value of the
    grid at ``s`` below its top). Then ``quantize(out, fmt, tensor_scale(out)) == out``.

    Args:
      x: the tensor.
      fmt: a `FloatFormat` or registered name.
      rounding: ``"nearest"`` or ``"stochastic"`` (the first rounding; needs ``key``).
      key: PRNG key for stochastic rounding.

    Returns:
      An array like ``x``, stored on its grid.

    Example:
      >>> x = jnp.array([0.3, 0.99])    # E0M7 (step 1/128, max 127/128), scale 1
      >>> t = quantize(x, "E0M7", tensor_scale(x, "E0M7"))   # 0.99 rounds up to the top, 127/128
      >>> bool(is_on_grid(t, "E0M7")), bool(is_on_grid(store_on_grid(x, "E0M7"), "E0M7"))
      (False, True)
      >>> store_on_grid(x, "E0M7").tolist()                  # on the grid at scale 2
      [0.296875, 1.0]
    """
    fmt = get_format(fmt)
    x = jnp.asarray(x)
    t = quantize(x, fmt, tensor_scale(x, fmt), rounding=rounding, key=key)
    return quantize(t, fmt, tensor_scale(t, fmt))


def is_on_grid(x: jax.Array, fmt: FloatFormat | str) -> jax.Array:
    """bool scalar: ``quantize(x, fmt, tensor_scale(x, fmt)) == x`` for every non-NaN element."""
    x = jnp.asarray(x)
    q = quantize(x, fmt, tensor_scale(x, fmt))
    return jnp.all((q == x) | jnp.isnan(x))
