"""Fake quantization: round float32 values onto a (scaled) format grid, keep them in float32.

``quantize(x, fmt, scale)`` computes ``Q(x / scale) * scale`` where ``Q`` rounds onto ``fmt``'s
grid. It works on float32 bit patterns (`altgrad_jax.formats.round_magnitude_bits`), so XLA cannot
elide it, and it is bit-identical to the ``ml_dtypes`` cast wherever a twin dtype exists.

Semantics:
  * rounding ``"nearest"``: round to nearest, ties to even, subnormal carry into the smallest normal;
    ``"stochastic"``: unbiased, ``E[Q(y)] = y`` inside the range, and only the two grid neighbours
    of ``y`` can come out.
  * finite overflow saturates to +-max (training semantics, every format).
  * NaN stays NaN and +-inf stays +-inf in every format, so a divergence is never hidden (even in
    formats that cannot represent them: the output is float32).
  * gradient: straight-through. ``ste="identity"`` passes the cotangent unchanged;
    ``ste="clipped"`` zeroes it where ``|x| > max * scale`` (outside the representable range).
  * ``scale`` must be positive and finite (see `altgrad_jax.quant.scaling`); gradients do not flow
    into it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.formats.codec import (_ABS_MASK, _EXP_MASK, _U32, _c, bits_float32, float32_bits,
                                       round_magnitude_bits)

ROUNDING_MODES = ("nearest", "stochastic")
STE_MODES = ("identity", "clipped")
IMPLEMENTATIONS = ("bits", "native")


def _round_to_grid(y: jax.Array, fmt: FloatFormat, random_bits: jax.Array | None) -> jax.Array:
    """float32 y -> float32 on fmt's unscaled grid, saturating (+-inf too); NaN passed through.

    (+-inf here comes from a finite x whose x / scale overflowed: it saturates like any finite
    overflow. An infinite x itself is passed through by the caller.)
    """
    bits = float32_bits(y)
    abs_bits = bits & _c(_ABS_MASK)
    finite = abs_bits < _c(_EXP_MASK)
    r = round_magnitude_bits(jnp.where(finite, abs_bits, _c(0)), fmt, random_bits)
    r = jnp.where(finite, jnp.minimum(r, _c(fmt.max_bits)), _c(fmt.max_bits))
    sign = bits & _c(0x80000000)
    if fmt.nan_inf == "fnuz":  # no -0 in fnuz formats (as their ml_dtypes casts)
        sign = jnp.where(r == 0, _c(0), sign)
    out = sign | r
    return bits_float32(jnp.where(abs_bits > _c(_EXP_MASK), bits, out))


def _native_round(y: jax.Array, fmt: FloatFormat) -> jax.Array:
    dtype = fmt.ml_dtype
    # The "fn" casts turn overflow into NaN: clip first (this also saturates +-inf, which here
    # comes from a finite x / scale overflowing). Note: XLA on CPU flushes float32 denormals in
    # fused element-wise kernels, so the bfloat16 subnormals (< 2^-126) come out as +-0 here;
    # impl="bits" keeps them.
    clipped = jnp.clip(y, -fmt.max, fmt.max)
    out = clipped.astype(dtype).astype(jnp.float32)
    return jnp.where(jnp.isnan(y), y, out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _fake_quant(fmt: FloatFormat, impl: str, ste: str, x: jax.Array, scale: jax.Array,
                random_bits: jax.Array | None) -> jax.Array:
    if fmt.min_subnormal <= 2.0 ** -126:
        # XLA on CPU flushes float32 denormals in arithmetic (x / 1.0 == 0 for x < 2^-126), which
        # would lose the subnormals of formats that reach below 2^-126 (bfloat16, E8My): skip the
        # division and multiplication for the unscaled grid. (Scaled grids down there are lost to
        # the same flush in the multiplication; that is XLA's, not the format's, behaviour.)
        unit = scale == 1
        y = jnp.where(unit, x, x / scale)
        q = _native_round(y, fmt) if impl == "native" else _round_to_grid(y, fmt, random_bits)
        return jnp.where(jnp.isfinite(x), jnp.where(unit, q, q * scale), x)
    y = x / scale
    q = _native_round(y, fmt) if impl == "native" else _round_to_grid(y, fmt, random_bits)
    return jnp.where(jnp.isfinite(x), q * scale, x)


@_fake_quant.defjvp
def _fake_quant_jvp(fmt, impl, ste, primals, tangents):
    x, scale, random_bits = primals
    x_dot = tangents[0]
    out = _fake_quant(fmt, impl, ste, x, scale, random_bits)
    if ste == "clipped":
        x_dot = jnp.where(jnp.abs(x) <= fmt.max * scale, x_dot, jnp.zeros_like(x_dot))
    return out, x_dot


def quantize(x: jax.Array, fmt: FloatFormat | str, scale: jax.Array | float = 1.0, *,
             rounding: str = "nearest", key: jax.Array | None = None, ste: str = "identity",
             impl: str = "bits") -> jax.Array:
    """Fake-quantizes ``x`` onto the grid of ``fmt`` scaled by ``scale``.

    .. math::
       \\mathrm{quantize}(x) = s \\cdot \\mathrm{clip}(\\mathrm{round}(x / s), -\\mathrm{max}, \\mathrm{max})

    Args:
      x: a floating-point array; computed in float32 and returned in ``x.dtype``.
      fmt: a `FloatFormat` or a registered name (``"E5M2"``, ``"float8_e4m3fn"``, ...).
      scale: a positive finite scalar (or array broadcastable to ``x``); 1.0 = unscaled grid.
      rounding: ``"nearest"`` (ties to even) or ``"stochastic"`` (unbiased; needs ``key``).
      key: a PRNG key for stochastic rounding.
      ste: straight-through gradient, ``"identity"`` or ``"clipped"`` (zero outside the range).
      impl: ``"bits"`` (integer rounding, every format, cannot be elided by XLA) or ``"native"``
        (the XLA cast to the ``ml_dtypes`` twin, clipped first; nearest rounding only, and only for
        float8/bfloat16/float16 twins). Both give identical values.

    Returns:
      An array like ``x`` whose finite values lie exactly on the scaled grid.

    Raises:
      ValueError: for an unknown format, rounding mode, STE mode or implementation, a missing key,
        or a non-floating ``x``.

    Example:
      >>> quantize(jnp.array([0.3, 1000.0]), "E4M3").tolist()
      [0.3125, 448.0]
    """
    fmt = get_format(fmt)
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    if ste not in STE_MODES:
        raise ValueError(f"ste must be one of {STE_MODES}, got {ste!r}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"quantize needs a floating-point array, got dtype {x.dtype}")
    if impl == "native":
        if rounding != "nearest":
            raise ValueError("impl='native' only rounds to nearest; use impl='bits' for stochastic")
        if fmt.ml_dtype is None or fmt.bits not in (8, 16):
            raise ValueError(
                f"impl='native' needs a float8/bfloat16/float16 ml_dtypes twin; {fmt} has none "
                "(XLA cannot cast float6/float4 on CPU): use impl='bits'")
    random_bits = None
    if rounding == "stochastic":
        if key is None:
            raise ValueError("rounding='stochastic' needs a PRNG key: quantize(..., key=key)")
        random_bits = jax.random.bits(key, x.shape, _U32)
    scale = lax.stop_gradient(jnp.asarray(scale, jnp.float32))
    out = _fake_quant(fmt, impl, ste, x.astype(jnp.float32), scale, random_bits)
    return out.astype(x.dtype)
