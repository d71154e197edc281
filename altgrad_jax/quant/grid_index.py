"""Integer positions on a format's grid: `rung_index`, `index_value`, `max_index`.

Grid index (format semantics): a code is sign-magnitude, ``S | E..E | M..M``. Its magnitude bits
``mag`` are monotone in the value, so the signed integer ``i = (-1)^S * mag`` enumerates the finite
grid in order, +0 and -0 both being ``i = 0``. Formats without subnormals skip the magnitudes
``1 .. 2^M - 1`` (they decode to 0). ``i`` is clipped to ``+-I_max`` with ``I_max`` the index of
``fmt.max``, so inf/NaN codes are never produced. Example, E4M3 (e4m3fn): ``0 0111 000`` = 1.0 has
``i = 56``; ``i = 57`` is ``0 0111 001`` = 1.125; ``i = 55`` is ``0 0110 111`` = 0.9375 (the binade
edge is crossed by the integer add); ``I_max = 126`` (448).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, decode, encode


def _index_offset(fmt: FloatFormat) -> int:
    return 0 if fmt.subnormals else (1 << fmt.mantissa_bits) - 1


def max_index(fmt: FloatFormat) -> int:
    """Index of ``fmt.max`` (the number of positive finite grid values)."""
    return fmt.max_code_magnitude - _index_offset(fmt)


def rung_index(y: jax.Array, fmt: FloatFormat) -> jax.Array:
    """int32 monotone grid index of ``round_to_nearest(y)`` (``y`` unscaled, finite; saturating).

    Example:
      >>> from altgrad_jax.formats import get_format
      >>> rung_index(jnp.array([1.0, 1.1, -0.95, 1e6]), get_format("E4M3")).tolist()
      [56, 57, -55, 126]
    """
    nb = fmt.exponent_bits + fmt.mantissa_bits
    code = encode(jnp.clip(y, -fmt.max, fmt.max), fmt).astype(jnp.int32)
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

