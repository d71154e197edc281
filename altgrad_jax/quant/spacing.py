"""The median grid spacing of a tensor on its recipe grid (`median_spacing`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.formats.codec import _c, _shr, float32_bits
from altgrad_jax.quant.scaling import tensor_scale
from altgrad_jax.quant.ulp import exp2_int, ulp


def median_spacing(x: jax.Array, fmt: FloatFormat | str) -> jax.Array:
    """The median of ``ulp(x_i, fmt, tensor_scale(x, fmt))`` over the finite elements of ``x``.

    Every spacing of a scaled grid is a power of two (``s * 2^(e - M)``, or ``s * min_normal``),
    so the median is read from a histogram of the spacings' float32 exponents (256 bins, one
    ``bincount``) instead of a sort. For an even count it is the *lower* median (the
    ``ceil(n / 2)``-th smallest spacing, ``np.sort(spacings)[(n - 1) // 2]``), so the result is
    always one of the tensor's spacings. Zeros count with the bottom spacing of the grid. NaN when
    no element is finite.

    Args:
      x: the tensor.
      fmt: a `FloatFormat` or a registered name.

    Returns:
      float32 scalar in parameter units.

    Example:
      >>> w = jnp.array([0.3, 0.5, 1.0, 3.0])   # E4M3, scale 2^-7: spacings 2^-5, 2^-4, 2^-3, 2^-2
      >>> median_spacing(w, "E4M3").item() == 2.0 ** -4
      True
    """
    fmt = get_format(fmt)
    x = jnp.asarray(x, jnp.float32)
    finite = jnp.isfinite(x)
    s = tensor_scale(jnp.where(finite, x, 0.0), fmt)
    step = ulp(jnp.where(finite, x, 0.0), fmt, s)
    e = (_shr(float32_bits(step), 23) & _c(0xFF)).astype(jnp.int32)  # biased exponent 0..255
    hist = jnp.bincount(e.reshape(-1), weights=finite.reshape(-1).astype(jnp.int32), length=256)
    n = jnp.sum(hist)
    cum = jnp.cumsum(hist)
    idx = jnp.argmax(cum >= (n + 1) // 2)  # the ceil(n/2)-th smallest
    out = exp2_int(jnp.clip(idx.astype(jnp.int32) - 127, -126, 127))
    return jnp.where(n > 0, out, jnp.float32(jnp.nan))
