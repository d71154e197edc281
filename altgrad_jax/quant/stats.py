"""Cheap quantization-health statistics of a tensor against a scaled format (jit-safe scalars)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant.quantize import quantize


def quantization_stats(x: jax.Array, fmt: FloatFormat | str,
                       scale: jax.Array | float = 1.0) -> dict[str, jax.Array]:
    """Overflow, underflow and rounding error of ``x`` on ``fmt``'s grid scaled by ``scale``.

    Returns a dict of float32 scalars:
      * ``overflow``: fraction of finite elements with ``|x| > max * scale`` (they saturate).
        Always 0 under current amax scaling; it can be non-zero under delayed scaling, with
        ``scale=1``, or for gradients.
      * ``underflow``: fraction of non-zero finite elements that quantize to zero (flush).
      * ``rel_error``: ``||Q(x) - x|| / ||x||`` (0 for an all-zero tensor).
      * ``nonfinite``: fraction of NaN/inf elements.
    """
    fmt = get_format(fmt)
    x = jnp.asarray(x, jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    finite = jnp.isfinite(x)
    q = quantize(x, fmt, scale)
    n = jnp.float32(max(x.size, 1))

    def count(mask):  # float32 count (bool sums are int32: no implicit promotion under "strict")
        return jnp.sum(mask, dtype=jnp.float32)

    overflow = count(finite & (jnp.abs(x) > fmt.max * scale)) / n
    nonzero = finite & (x != 0)
    underflow = count(nonzero & (q == 0)) / jnp.maximum(count(nonzero), jnp.float32(1))
    xf = jnp.where(finite, x, 0.0)
    qf = jnp.where(finite, q, 0.0)
    norm = jnp.sqrt(jnp.sum(xf * xf))
    rel = jnp.where(norm > 0, jnp.sqrt(jnp.sum((qf - xf) ** 2)) / jnp.maximum(norm, 1e-30), 0.0)
    return {"overflow": overflow, "underflow": underflow, "rel_error": rel,
            "nonfinite": count(~finite) / n}
