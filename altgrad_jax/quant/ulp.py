"""Local grid spacing (unit in the last place) of a scaled format."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.formats.codec import _ABS_MASK, _c, _shl, _shr, bits_float32, float32_bits
from altgrad_jax.quant.quantize import divide_by_scale


def exp2_int(k: jax.Array) -> jax.Array:
    """Exact float32 ``2^k`` for integer ``k`` in [-149, 127], built from bits (no FTZ, no libm)."""
    k = jnp.asarray(k, jnp.int32)
    normal = _shl(jnp.clip(k + 127, 1, 254).astype(jnp.uint32), 23)
    denormal = _shl(_c(1), jnp.clip(k + 149, 0, 22).astype(jnp.uint32))
    return bits_float32(jnp.where(k >= -126, normal, denormal))


def ulp(x: jax.Array, fmt: FloatFormat | str, scale: jax.Array | float = 1.0) -> jax.Array:
    """Grid spacing of ``fmt`` (scaled by ``scale``) in the binade that contains ``x``.

    With ``y = |x| / scale`` and ``e = floor(log2 y)``:

    .. math::
       \\mathrm{ulp}(x) = s \\cdot 2^{\\mathrm{clip}(e,\\, e_{min},\\, e_{max}) - M}

    so the subnormal region (and zero) has the constant subnormal step ``2^(emin - M)``, values at or
    above ``max`` (which saturate) get the top binade's step, fixed-point formats (E0My) get their
    constant step everywhere, and without subnormals the region below ``min_normal`` is one step of
    ``min_normal``. At a power of two the spacing *above* it is returned (the binade's own).
    NaN/inf inputs give NaN.

    Args:
      x: float array.
      fmt: a `FloatFormat` or a registered name.
      scale: the per-tensor scale (positive, finite; scalar or broadcastable).

    Returns:
      float32 array of the same shape.

    Example:
      >>> ulp(jnp.array([0.0, 1.0, 1.9, 448.0, 1e6]), "E4M3").tolist()
      [0.001953125, 0.125, 0.125, 32.0, 32.0]
    """
    fmt = get_format(fmt)
    x = jnp.asarray(x, jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    y_bits = float32_bits(divide_by_scale(jnp.abs(x), scale)) & _c(_ABS_MASK)
    e = _shr(y_bits, 23).astype(jnp.int32) - 127
    m = fmt.mantissa_bits
    emax = max(fmt.emax, fmt.emin)
    e_c = jnp.clip(e, fmt.emin, emax)
    step = exp2_int(e_c - m)
    if not fmt.subnormals:
        step = jnp.where(e < fmt.emin, jnp.float32(fmt.min_normal), step)
    if fmt.min_subnormal < 2.0 ** -126:  # XLA CPU flushes float32 denormals in the product
        out = jnp.where(scale == 1, step, step * scale)
    else:
        out = step * scale
    return jnp.where(jnp.isfinite(x), out, jnp.float32(jnp.nan))
