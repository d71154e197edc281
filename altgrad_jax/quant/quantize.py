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
from altgrad_jax.formats.codec import (_ABS_MASK, _EXP_MASK, _c, bits_float32, float32_bits,
                                       round_magnitude_bits)
from altgrad_jax.quant.random import hash_bits

ROUNDING_MODES = ("nearest", "stochastic")
STE_MODES = ("identity", "clipped")
IMPLEMENTATIONS = ("bits", "native")


def divide_by_scale(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``x / scale`` element-wise with IEEE division, also inside jit.

    XLA rewrites a division by a broadcast scalar into a multiplication by its reciprocal, which
    differs from ``x / scale`` in the last bit for a large share of inputs (measured on CPU: 42% of
    normal samples at ``scale = 0.37``) and so moves rounding boundaries by one float32 ulp, in some
    programs and not in others. Dividing by ``scale + 0 * x`` (equal to ``scale`` for finite ``x``;
    non-finite ``x`` is handled by the callers) keeps the divisor element-wise, which XLA leaves as
    a true division. A test compares against NumPy's division so a change in XLA shows up.
    """
    return x / (scale + jnp.float32(0.0) * x)


def _saturated_magnitude(abs_bits: jax.Array, fmt: FloatFormat,
                         random_bits: jax.Array | None = None) -> jax.Array:
    """float32 bits of ``|y|`` rounded onto fmt's grid and saturated at ``max`` (+-inf and finite
    overflow alike); a NaN's magnitude comes out as ``max`` too (callers handle NaN)."""
    finite = abs_bits < _c(_EXP_MASK)
    r = round_magnitude_bits(jnp.where(finite, abs_bits, _c(0)), fmt, random_bits)
    return jnp.where(finite, jnp.minimum(r, _c(fmt.max_bits)), _c(fmt.max_bits))


def _round_to_grid(y: jax.Array, fmt: FloatFormat, random_bits: jax.Array | None) -> jax.Array:
    """float32 y -> float32 on fmt's unscaled grid, saturating (+-inf too); NaN passed through.

    (+-inf here comes from a finite x whose x / scale overflowed: it saturates like any finite
    overflow. An infinite x itself is passed through by the caller.)
    """
    bits = float32_bits(y)
    abs_bits = bits & _c(_ABS_MASK)
    r = _saturated_magnitude(abs_bits, fmt, random_bits)
    sign = bits & _c(0x80000000)
    if fmt.nan_inf == "fnuz":  # no -0 in fnuz formats (as their ml_dtypes casts)
        sign = jnp.where(r == 0, _c(0), sign)
    out = sign | r
    return bits_float32(jnp.where(abs_bits > _c(_EXP_MASK), bits, out))


def grid_key(x: jax.Array, fmt: FloatFormat | str, scale: jax.Array | float = 1.0) -> jax.Array:
    """int32 key of the grid point that ``quantize(x, fmt, scale)`` (nearest) rounds ``x`` to.

    ``grid_key(a) == grid_key(b)`` exactly when ``quantize(a) == quantize(b)`` for non-NaN ``a, b``
    (+0 and -0 share key 0; +-inf get keys beyond +-max; a NaN gets ``INT32_MIN``, but since
    ``NaN != NaN`` callers comparing quantized values must treat NaN themselves). The key is
    monotone in ``x``. It skips the decode, the sign and the multiplication by the scale, so
    comparing keys is the cheap way to ask "did the quantized value change?" (flip counting).
    Formats whose subnormals reach below 2^-126 (bfloat16, E8My) are not supported here (XLA on CPU
    flushes them in the division): use `quantize` for those.

    Example:
      >>> grid_key(jnp.array([0.30, 0.31, -0.30]), "E4M3").tolist() == [
      ...     1050673152, 1050673152, -1050673152]
      True
    """
    fmt = get_format(fmt)
    if fmt.min_subnormal <= 2.0 ** -126:
        raise ValueError(f"grid_key does not support {fmt} (subnormals below 2^-126): use quantize")
    x = jnp.asarray(x, jnp.float32)
    y_bits = float32_bits(divide_by_scale(x, jnp.asarray(scale, jnp.float32)))
    r = _saturated_magnitude(y_bits & _c(_ABS_MASK), fmt)
    x_bits = float32_bits(x)
    x_abs = x_bits & _c(_ABS_MASK)
    r = jnp.where(x_abs < _c(_EXP_MASK), r, jnp.where(x_abs == _c(_EXP_MASK), _c(_EXP_MASK), _c(0)))
    key = r.astype(jnp.int32)
    key = jnp.where(x_bits >= _c(0x80000000), -key, key)  # the sign of x (y may be NaN)
    return jnp.where(x_abs > _c(_EXP_MASK), jnp.int32(-(2 ** 31)), key)


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
        y = jnp.where(unit, x, divide_by_scale(x, scale))
        q = _native_round(y, fmt) if impl == "native" else _round_to_grid(y, fmt, random_bits)
        return jnp.where(jnp.isfinite(x), jnp.where(unit, q, q * scale), x)
    y = divide_by_scale(x, scale)
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
      key: a PRNG key for stochastic rounding (expanded to one word per element by the
        counter-based `altgrad_jax.quant.random.hash_bits`).
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
        random_bits = hash_bits(key, x.shape)  # counter-based: ~5x faster than threefry
    scale = lax.stop_gradient(jnp.asarray(scale, jnp.float32))
    out = _fake_quant(fmt, impl, ste, x.astype(jnp.float32), scale, random_bits)
    return out.astype(x.dtype)
